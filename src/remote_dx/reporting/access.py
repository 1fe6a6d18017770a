"""Who may write, sign and confirm a study's report.

- Signing (and amending) needs a qualified reader of the study's *current* pool: role reader or
  senior reader, active, belonging to the institution the worklist item is routed to, reading
  the item's section when it has one, and qualified for the study's modality
  (``User.modalities``). A technician, an administrator or a reader of another pool cannot sign.
- Second signature (报告审核): a *senior* is role ``senior_reader`` or a reader titled
  副主任医师 / 主任医师; everyone else (住院医师, 主治医师, untitled) is junior. Where the item
  requires a second signature a junior's signature is preliminary and only a senior confirms it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from remote_dx.core.models import (
    ECGAnalysisRecord,
    Institution,
    Patient,
    Report,
    Role,
    Series,
    Study,
    User,
    WorklistItem,
)
from remote_dx.reporting.errors import NotPermitted, ReportConflict, ReportNotFound
from remote_dx.worklist.service import visibility

SIGNING_ROLES = frozenset({Role.READER, Role.SENIOR_READER})
SENIOR_TITLES = frozenset({"副主任医师", "主任医师"})


def is_senior(user: User) -> bool:
    role = Role(user.role)
    return role is Role.SENIOR_READER or (role is Role.READER and user.title in SENIOR_TITLES)


@dataclass
class StudyContext:
    """A study with everything a report step reads, loaded in one place."""

    study: Study
    patient: Patient
    origin: Institution
    item: WorklistItem | None
    pool: Institution | None
    report: Report | None
    modality: str | None

    def ecg_record(self, session: Session) -> ECGAnalysisRecord | None:
        return session.scalar(
            select(ECGAnalysisRecord).where(ECGAnalysisRecord.study_pk == self.study.id)
        )


def study_modality(session: Session, study: Study) -> str | None:
    """The first series' modality (the worklist's rule); the index's when no series has one."""
    first = session.scalar(
        select(Series.modality)
        .where(Series.study_pk == study.id, Series.modality.is_not(None))
        .order_by(Series.id)
        .limit(1)
    )
    return first or ((study.modalities or "").split("\\")[0] or None)


def load(session: Session, user: User, study_uid: str, *, lock: bool = False) -> StudyContext:
    """The study if ``user`` may see it, else :class:`ReportNotFound` (same for absent).

    ``lock`` takes the worklist item and report rows FOR UPDATE (PostgreSQL; SQLite serialises
    writers anyway), so two signatures of one report cannot interleave.
    """
    row = session.execute(
        select(Study, WorklistItem)
        .outerjoin(WorklistItem, WorklistItem.study_pk == Study.id)
        .where(Study.study_uid == study_uid, visibility(user))
    ).one_or_none()
    if row is None:
        raise ReportNotFound(f"study {study_uid} not found")
    study, item = row
    if lock and item is not None:
        item = session.scalar(
            select(WorklistItem).where(WorklistItem.id == item.id).with_for_update()
        )
    statement = select(Report).where(Report.study_pk == study.id)
    report = session.scalar(statement.with_for_update() if lock else statement)
    patient = session.get(Patient, study.patient_pk)
    origin = session.get(Institution, study.origin_id)
    assert patient is not None and origin is not None
    pool = session.get(Institution, item.pool_id) if item is not None else None
    return StudyContext(study, patient, origin, item, pool, report, study_modality(session, study))


def signing_refusal(user: User, ctx: StudyContext) -> str | None:
    """Why ``user`` may not sign this study's report, or None if they may."""
    role = Role(user.role)
    if not user.active:
        return "this account is disabled"
    if role not in SIGNING_ROLES:
        return f"a {role.value} cannot sign reports; only readers of the study's pool can"
    item = ctx.item
    if item is None or ctx.pool is None:
        return "the study is not routed to a reading pool yet"
    if user.institution_id != item.pool_id:
        return f"only readers of the pool the study is routed to ({ctx.pool.name}) can sign"
    if item.section and item.section not in (user.sections or []):
        return (
            f"the study is routed to the {item.section!r} section, which this reader does not read"
        )
    if ctx.modality and ctx.modality.upper() not in {m.upper() for m in user.modalities or []}:
        return (
            f"this reader is not qualified to read {ctx.modality} (modalities: "
            + (", ".join(user.modalities or []) or "none")
            + ")"
        )
    return None


def require_signer(user: User, ctx: StudyContext) -> None:
    reason = signing_refusal(user, ctx)
    if reason is not None:
        raise NotPermitted(reason)


def lease_holder_refusal(user: User, item: WorklistItem | None, now: datetime) -> str | None:
    if item is None:
        return "the study is not on a worklist yet"
    if item.claimed_by_id is None:
        return "claim the study before writing its report"
    if item.claimed_by_id != user.id:
        holder = item.claimed_by.full_name if item.claimed_by is not None else "another reader"
        return f"the study is claimed by {holder}"
    # A holder whose lease ran out but whom nobody replaced (the sweep has not freed the item)
    # still holds it, as for the lease's renewal: autosave after a pause must not lose the text.
    return None


def require_lease(user: User, item: WorklistItem | None, now: datetime) -> None:
    reason = lease_holder_refusal(user, item, now)
    if reason is not None:
        raise ReportConflict(reason)


def require_no_other_holder(user: User, item: WorklistItem | None, now: datetime) -> None:
    """Signing steps need no claim of their own, but never cut across another reader's lease."""
    if item is None or item.claimed_by_id in (None, user.id):
        return
    if item.lease_expires_at is None or item.lease_expires_at > now:
        holder = item.claimed_by.full_name if item.claimed_by is not None else "another reader"
        raise ReportConflict(f"the study is claimed by {holder}")
