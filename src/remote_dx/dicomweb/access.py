"""Who may see which studies over DICOMweb: the worklist's rule, applied to index queries.

:func:`remote_dx.worklist.service.visibility` decides (readers: studies routed to their
institution's pool; technicians: studies their institution sent; administrators: all; other roles:
none). It is written over ``studies`` outer-joined to ``worklist_items``; :func:`scoped` adds that
join only for the roles whose rule needs it. An out-of-scope UID answers 404 exactly like an
unknown one, so existence is never revealed.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from types import SimpleNamespace
from typing import Any, cast

from sqlalchemy import Select, bindparam, select
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
    size_bytes: int | None = None  # the stored object's; large ones have frames read by range


_REF_COLUMNS = (
    Study.study_uid,
    Series.series_uid,
    Instance.sop_instance_uid,
    Instance.sop_class_uid,
    Instance.transfer_syntax_uid,
    Instance.object_key,
    Instance.number_of_frames,
    Instance.instance_number,
    Instance.size_bytes,
)


def _build(user: User, by_series: bool, by_sop: bool) -> Select[Any]:
    statement = (
        select(*_REF_COLUMNS)
        .select_from(Instance)
        .join(Series, Series.id == Instance.series_pk)
        .join(Study, Study.id == Series.study_pk)
        .where(Study.study_uid == bindparam("study_uid"))
    )
    if by_series:
        statement = statement.where(Series.series_uid == bindparam("series_uid"))
    if by_sop:
        statement = statement.where(Instance.sop_instance_uid == bindparam("sop_uid"))
    return scoped(statement, user).order_by(
        Series.series_number, Series.id, Instance.instance_number, Instance.id
    )


@lru_cache(maxsize=64)
def _instances_statement(role: Role, by_series: bool, by_sop: bool) -> Select[Any] | None:
    """The look-up behind every retrieve, built once per role and shape with bound parameters.

    Building the statement (and its scoping clause) anew for each frame request cost more
    than running it. visibility() reads the user's role and institution; a bound parameter
    stands in for the institution. None if the rule comes to read more of the user.
    """
    anyone = cast(User, SimpleNamespace(role=role, institution_id=bindparam("institution_id")))
    try:
        return _build(anyone, by_series, by_sop)
    except AttributeError:
        return None


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
    by_series, by_sop = series_uid is not None, sop_instance_uid is not None
    statement = _instances_statement(Role(user.role), by_series, by_sop)
    if statement is None:
        statement = _build(user, by_series, by_sop)
    params = {
        "study_uid": study_uid,
        "series_uid": series_uid,
        "sop_uid": sop_instance_uid,
        "institution_id": user.institution_id,
    }
    used = {name: value for name, value in params.items() if name in _params_of(statement)}
    # Core execution on the session's connection: plain rows, no ORM result machinery.
    rows = session.connection().execute(statement, used)
    refs = [InstanceRef(*row) for row in rows]
    if not refs:
        what = sop_instance_uid or series_uid or study_uid
        level = "instance" if sop_instance_uid else "series" if series_uid else "study"
        raise NotFound(f"{level} {what} not found")
    return refs


@lru_cache(maxsize=64)
def _params_of(statement: Select[Any]) -> frozenset[str]:
    return frozenset(statement.compile().params)


def visible_study(session: Session, user: User, study_uid: str) -> Study | None:
    statement = scoped(select(Study).where(Study.study_uid == study_uid), user)
    return session.scalar(statement)
