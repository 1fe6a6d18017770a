"""Who may see which studies over DICOMweb: the worklist's rule, applied to index queries.

:func:`remote_dx.worklist.service.visibility` decides (readers: studies routed to their
institution's pool; technicians: studies their institution sent; administrators: all; other roles:
none). It is written over ``studies`` outer-joined to ``worklist_items``; :func:`scoped` adds that
join only for the roles whose rule needs it. An out-of-scope UID answers 404 exactly like an
unknown one, so existence is never revealed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from remote_dx.core.errors import NotFound
from remote_dx.core.models import Instance, Role, Series, Study, User, WorklistItem
from remote_dx.worklist.service import READER_ROLES, visibility


def scoped(statement: Select[Any], user: User) -> Select[Any]:
    """``statement`` (which already selects from ``studies``) limited to what ``user`` sees."""
    if Role(user.role) in READER_ROLES:
        statement = statement.outerjoin(WorklistItem, WorklistItem.study_pk == Study.id)
    return statement.where(visibility(user))


@dataclass(frozen=True)
class InstanceRef:
    """One stored instance the user may read, with what retrieval needs from the index."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    object_key: str
    number_of_frames: int | None
    instance_number: int | None


_REF_COLUMNS = (
    Study.study_uid,
    Series.series_uid,
    Instance.sop_instance_uid,
    Instance.sop_class_uid,
    Instance.transfer_syntax_uid,
    Instance.object_key,
    Instance.number_of_frames,
    Instance.instance_number,
)


def instances(
    session: Session,
    user: User,
    study_uid: str,
    series_uid: str | None = None,
    sop_instance_uid: str | None = None,
) -> list[InstanceRef]:
    """The visible instances of a study / series / one instance, in series and instance order.

    Raises :class:`NotFound` when nothing matches (unknown or out of scope alike).
    """
    statement = (
        select(*_REF_COLUMNS)
        .select_from(Instance)
        .join(Series, Series.id == Instance.series_pk)
        .join(Study, Study.id == Series.study_pk)
        .where(Study.study_uid == study_uid)
    )
    if series_uid is not None:
        statement = statement.where(Series.series_uid == series_uid)
    if sop_instance_uid is not None:
        statement = statement.where(Instance.sop_instance_uid == sop_instance_uid)
    statement = scoped(statement, user).order_by(
        Series.series_number, Series.id, Instance.instance_number, Instance.id
    )
    refs = [InstanceRef(*row) for row in session.execute(statement)]
    if not refs:
        what = sop_instance_uid or series_uid or study_uid
        level = "instance" if sop_instance_uid else "series" if series_uid else "study"
        raise NotFound(f"{level} {what} not found")
    return refs


def visible_study(session: Session, user: User, study_uid: str) -> Study | None:
    statement = scoped(select(Study).where(Study.study_uid == study_uid), user)
    return session.scalar(statement)
