"""Escalation: consultation requests (会诊) and automatic escalation of overdue studies.

Both move a study's worklist item one step up the referral tree: the item changes pool, its
``escalation_level`` grows by one, it is unread again with no lease, and it gets a new due time
(the consultation SLA, or the escalation SLA of the rules in force). Each move is one
compare-and-set on ``worklist_items.version`` — a claim, a sign or another sweeper that got there
first makes it a no-op — and it is recorded as a RoutingDecision (``consultation`` or
``escalation``) in the same transaction.

"One level up" is the pool's parent institution: county → city → province. A study overdue at
the top of the tree stays where it is and is flagged once (``escalated_at`` set, a decision
with ``detail.at_top``), so supervisors and statistics see it.

Who may see a study's routing history and consultations: whoever may see the study
(:func:`remote_dx.worklist.service.visibility`), plus readers of any pool the study passed
through — the county reader who asked keeps seeing the province's answer.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from remote_dx.core import audit as audit_chain
from remote_dx.core import errors
from remote_dx.core.clock import utcnow
from remote_dx.core.models import (
    Consultation,
    ConsultationStatus,
    Institution,
    InstitutionLevel,
    Patient,
    Role,
    Study,
    User,
    WorklistItem,
    WorklistStatus,
)
from remote_dx.core.models import RoutingDecision as DecisionRecord
from remote_dx.core.models import RoutingDecisionKind as DecisionKind
from remote_dx.routing.route import active_rules
from remote_dx.routing.rules import RuleSet

log = logging.getLogger(__name__)

READER_ROLES = frozenset({Role.READER, Role.SENIOR_READER, Role.SUPERVISOR})
AUTO_RULE = "auto-escalation/overdue"
AUTO_TOP_RULE = "auto-escalation/at-top"
CONSULTATION_RULE = "consultation"
OPEN_STATUSES = [s for s in WorklistStatus if s is not WorklistStatus.SIGNED]


class EscalationError(errors.ServiceError):
    """A routing/consultation request that cannot be carried out."""


class NotFound(EscalationError, errors.NotFound):
    pass


class Forbidden(EscalationError, errors.Forbidden):
    pass


class Conflict(EscalationError, errors.Conflict):
    pass


class Invalid(EscalationError, errors.Invalid):
    pass


# --- who may see what -----------------------------------------------------------------------------


def _load(session: Session, study_uid: str) -> tuple[Study, WorklistItem | None] | None:
    row = session.execute(
        select(Study, WorklistItem)
        .outerjoin(WorklistItem, WorklistItem.study_pk == Study.id)
        .where(Study.study_uid == study_uid)
    ).first()
    return None if row is None else (row[0], row[1])


def pools_passed(session: Session, study_pk: int) -> set[int]:
    """Every pool the study was routed to or moved from."""
    pools: set[int] = set()
    for pool, previous in session.execute(
        select(DecisionRecord.pool_id, DecisionRecord.from_pool_id).where(
            DecisionRecord.study_pk == study_pk
        )
    ):
        pools.add(pool)
        if previous is not None:
            pools.add(previous)
    for source, target in session.execute(
        select(Consultation.from_pool_id, Consultation.to_pool_id).where(
            Consultation.study_pk == study_pk
        )
    ):
        pools.update((source, target))
    return pools


def can_see(session: Session, user: User, study: Study, item: WorklistItem | None) -> bool:
    role = Role(user.role)
    if role is Role.ADMIN:
        return True
    if role is Role.TECHNICIAN:
        return study.origin_id == user.institution_id
    if role in READER_ROLES:
        if item is not None and item.pool_id == user.institution_id:
            return True
        return user.institution_id in pools_passed(session, study.id)
    return False


def _visible(session: Session, user: User, study_uid: str) -> tuple[Study, WorklistItem | None]:
    found = _load(session, study_uid)
    if found is None or not can_see(session, user, *found):
        # The same answer for absent and out of scope: existence is not revealed.
        raise NotFound(f"study {study_uid} not found")
    return found


# --- the tree -------------------------------------------------------------------------------------


def ancestors(pool: Institution) -> list[Institution]:
    """The pool's parent, grandparent, … up to the root."""
    out: list[Institution] = []
    node = pool.parent
    while node is not None and node not in out:
        out.append(node)
        node = node.parent
    return out


def consultation_target(
    session: Session, pool: Institution, rules: RuleSet, requested: str | None = None
) -> Institution:
    """Where a consultation from ``pool`` goes: the requested code (an institution above the
    pool), else the rules' ``consultation.target`` (``province``: the nearest province-level
    institution above; ``parent``: one level up; or a code)."""
    above = ancestors(pool)
    if requested:
        chosen = next((i for i in above if i.code == requested), None)
        if chosen is None:
            raise Invalid(
                f"{requested!r} is not an institution above {pool.name} ({pool.code}); "
                f"choose one of: {', '.join(i.code for i in above) or 'none'}"
            )
        return chosen
    if not above:
        raise Conflict(f"{pool.name} ({pool.code}) has no higher-level pool to consult")
    target = rules.consultation_target
    if target == "parent":
        return above[0]
    if target == "province":
        return next((i for i in above if i.level == InstitutionLevel.PROVINCE), above[0])
    chosen = session.scalar(select(Institution).where(Institution.code == target))
    if chosen is None or chosen.id == pool.id:
        return above[0]
    return chosen


# --- moving an item -------------------------------------------------------------------------------


def _move(
    session: Session,
    item_id: int,
    *,
    version: int,
    to_pool_id: int,
    due_at: datetime,
    now: datetime,
) -> bool:
    """Compare-and-set the item into ``to_pool_id``; False if it changed (or got signed)."""
    result = session.execute(
        update(WorklistItem)
        .where(
            WorklistItem.id == item_id,
            WorklistItem.version == version,
            WorklistItem.status != WorklistStatus.SIGNED,
        )
        .values(
            pool_id=to_pool_id,
            escalation_level=WorklistItem.escalation_level + 1,
            escalated_at=now,
            status=WorklistStatus.UNREAD,
            claimed_by_id=None,
            claimed_at=None,
            lease_expires_at=None,
            due_at=due_at,
            # A subspecialty section belongs to the pool that had it; upstairs any reader reads.
            section=None,
            version=WorklistItem.version + 1,
        )
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


def _modalities(study: Study) -> list[str]:
    return (study.modalities or "").split("\\") if study.modalities else []


# --- consultations --------------------------------------------------------------------------------


def request_consultation(
    session: Session,
    user: User,
    study_uid: str,
    *,
    question: str,
    opinion: str | None = None,
    to_pool: str | None = None,
    now: datetime | None = None,
    rules: RuleSet | None = None,
) -> Consultation:
    """A reader of the study's current pool asks a higher pool (会诊); commits.

    The study moves to the target pool (see the module docstring); the question and the
    requester's own opinion are kept in a Consultation row, answered later by the target pool.
    """
    now = now or utcnow()
    study, item = _visible(session, user, study_uid)
    if Role(user.role) not in READER_ROLES or item is None or item.pool_id != user.institution_id:
        raise Forbidden(
            "only a reader of the pool the study is routed to can request a consultation"
        )
    if item.status == WorklistStatus.SIGNED:
        raise Conflict("the study is already signed; amend the report instead")
    if not question.strip():
        raise Invalid("the consultation needs a question")
    open_one = session.scalar(
        select(Consultation.id).where(
            Consultation.study_pk == study.id, Consultation.status == ConsultationStatus.OPEN
        )
    )
    if open_one is not None:
        raise Conflict(f"consultation {open_one} on this study is still open")
    rules = rules or active_rules(session)
    source = item.pool
    target = consultation_target(session, source, rules, to_pool)
    due_at = now + rules.consultation_sla[item.priority]
    version, from_pool_id, level = item.version, item.pool_id, item.escalation_level or 0
    if not _move(session, item.id, version=version, to_pool_id=target.id, due_at=due_at, now=now):
        session.rollback()
        raise Conflict("the study changed meanwhile (claimed, signed or moved); reload and retry")
    consultation = Consultation(
        study_pk=study.id,
        requested_by_id=user.id,
        from_pool_id=from_pool_id,
        to_pool_id=target.id,
        automatic=False,
        question=question.strip(),
        requester_opinion=(opinion or "").strip() or None,
        status=ConsultationStatus.OPEN,
        requested_at=now,
    )
    session.add(consultation)
    session.flush()
    session.add(
        DecisionRecord(
            study_pk=study.id,
            kind=DecisionKind.CONSULTATION,
            rule=CONSULTATION_RULE,
            from_pool_id=from_pool_id,
            pool_id=target.id,
            section=None,
            priority=item.priority,
            due_at=due_at,
            decided_at=now,
            decided_by_id=user.id,
            detail={
                "consultation_id": consultation.id,
                "level": level + 1,
                "rules": rules.source,
            },
        )
    )
    session.commit()
    session.refresh(consultation)
    return consultation


def answer_consultation(
    session: Session,
    user: User,
    study_uid: str,
    consultation_id: int,
    *,
    answer: str,
    now: datetime | None = None,
) -> Consultation:
    """A reader of the consulted pool gives the upper-level opinion; commits."""
    now = now or utcnow()
    study, _item = _visible(session, user, study_uid)
    consultation = session.get(Consultation, consultation_id)
    if consultation is None or consultation.study_pk != study.id:
        raise NotFound(f"consultation {consultation_id} not found on study {study_uid}")
    if Role(user.role) not in READER_ROLES or user.institution_id != consultation.to_pool_id:
        raise Forbidden("only a reader of the consulted pool can answer")
    if consultation.status != ConsultationStatus.OPEN:
        raise Conflict(f"consultation {consultation_id} is {consultation.status}, not open")
    if not answer.strip():
        raise Invalid("the answer is empty")
    result = session.execute(
        update(Consultation)
        .where(Consultation.id == consultation_id, Consultation.status == ConsultationStatus.OPEN)
        .values(
            status=ConsultationStatus.ANSWERED,
            answer=answer.strip(),
            answered_by_id=user.id,
            answered_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        raise Conflict(f"consultation {consultation_id} was answered meanwhile")
    session.commit()
    session.refresh(consultation)
    return consultation


def list_consultations(session: Session, user: User, study_uid: str) -> Sequence[Consultation]:
    study, _item = _visible(session, user, study_uid)
    return session.scalars(
        select(Consultation).where(Consultation.study_pk == study.id).order_by(Consultation.id)
    ).all()


def routing_history(session: Session, user: User, study_uid: str) -> Sequence[DecisionRecord]:
    study, _item = _visible(session, user, study_uid)
    return session.scalars(
        select(DecisionRecord)
        .where(DecisionRecord.study_pk == study.id)
        .order_by(DecisionRecord.decided_at, DecisionRecord.id)
    ).all()


# --- automatic escalation -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Overdue:
    item_id: int
    version: int
    pool_id: int
    status: WorklistStatus
    level: int
    due_at: datetime
    study_pk: int
    study_uid: str
    modalities: str | None
    priority: Any
    section: str | None
    claimed_by_id: int | None


def find_overdue(session: Session, now: datetime, limit: int = 500) -> list[_Overdue]:
    """Items past due, not signed, and not yet escalated (or flagged) since they fell due."""
    rows = session.execute(
        select(
            WorklistItem.id,
            WorklistItem.version,
            WorklistItem.pool_id,
            WorklistItem.status,
            WorklistItem.escalation_level,
            WorklistItem.due_at,
            Study.id,
            Study.study_uid,
            Study.modalities,
            WorklistItem.priority,
            WorklistItem.section,
            WorklistItem.claimed_by_id,
        )
        .join(Study, Study.id == WorklistItem.study_pk)
        .where(
            # IN over the open statuses (not "!= signed"): the status index then finds the few
            # open items rather than every signed item of past years.
            WorklistItem.status.in_(OPEN_STATUSES),
            WorklistItem.due_at <= now,
            # escalated_at ≥ due_at: already moved (new due later) or flagged at the top.
            or_(
                WorklistItem.escalated_at.is_(None), WorklistItem.escalated_at < WorklistItem.due_at
            ),
        )
        .order_by(WorklistItem.due_at, WorklistItem.id)
        .limit(limit)
    ).all()
    return [_Overdue(*row) for row in rows]


def escalate_overdue(
    sessions: sessionmaker[Session],
    now: datetime | None = None,
    *,
    rules: RuleSet | None = None,
    limit: int = 500,
) -> list[str]:
    """Escalate every overdue item one level up; return the UIDs of the studies moved.

    Idempotent and safe with several sweepers: each move is a compare-and-set on the item's
    version, in its own short transaction with its RoutingDecision; a study at the top of the
    tree is flagged once instead (not in the returned list).
    """
    now = now or utcnow()
    with sessions() as session:
        overdue = find_overdue(session, now, limit)
        if not overdue:
            return []
        rules = rules or active_rules(session)
        parent_of: dict[int, int | None] = {}
        code_of: dict[int, str] = {}
        for pk, parent_pk, code in session.execute(
            select(Institution.id, Institution.parent_id, Institution.code)
        ):
            parent_of[pk], code_of[pk] = parent_pk, code
    moved: list[str] = []
    for row in overdue:
        reason = (
            "not claimed by its due time"
            if row.status == WorklistStatus.UNREAD
            else "not signed by its due time"
        )
        detail = {
            "reason": reason,
            "status_was": str(row.status),
            "claimed_by_id": row.claimed_by_id,
            "overdue_since": row.due_at.isoformat(),
            "rules": rules.source,
        }
        parent = parent_of.get(row.pool_id)
        with sessions() as session, session.begin():
            if parent is None:
                flagged = session.execute(
                    update(WorklistItem)
                    .where(WorklistItem.id == row.item_id, WorklistItem.version == row.version)
                    .values(escalated_at=now, version=WorklistItem.version + 1)
                    .execution_options(synchronize_session=False)
                )
                if flagged.rowcount != 1:  # type: ignore[attr-defined]
                    continue
                rule, to_pool, due_at = AUTO_TOP_RULE, row.pool_id, row.due_at
                detail.update(at_top=True, level=row.level)
                log.warning("study %s is overdue at the top of the tree", row.study_uid)
            else:
                due_at = now + rules.escalation_sla_for(
                    (row.modalities or "").split("\\"), row.priority
                )
                if not _move(
                    session,
                    row.item_id,
                    version=row.version,
                    to_pool_id=parent,
                    due_at=due_at,
                    now=now,
                ):
                    continue  # claimed, signed or escalated by someone else meanwhile
                rule, to_pool = AUTO_RULE, parent
                detail.update(at_top=False, level=row.level + 1, section_was=row.section)
                moved.append(row.study_uid)
            session.add(
                DecisionRecord(
                    study_pk=row.study_pk,
                    kind=DecisionKind.ESCALATION,
                    rule=rule,
                    from_pool_id=row.pool_id,
                    pool_id=to_pool,
                    section=row.section if to_pool == row.pool_id else None,
                    priority=row.priority,
                    due_at=due_at,
                    decided_at=now,
                    detail=detail,
                )
            )
            # Issue 7: every escalation is in the audit trail, the sweeper's too; in the move's
            # transaction, so a move is never committed without its record.
            _audit_escalation(session, row, rule, code_of, to_pool, detail)
    if moved:
        log.info("escalated %d overdue studies one level up", len(moved))
    return moved


def _audit_escalation(
    session: Session,
    row: _Overdue,
    rule: str,
    code_of: dict[int, str],
    to_pool_id: int,
    detail: dict[str, Any],
) -> None:
    """The automatic escalation as an audit record (IHE ATNA): the hub's sweeper is the actor,
    the study and its patient (HL7 CX ``ID^^^Issuer``) the participant objects."""
    patient = session.execute(
        select(Patient.patient_id, Patient.issuer)
        .join(Study, Study.patient_pk == Patient.id)
        .where(Study.id == row.study_pk)
    ).first()
    audit_chain.append_in(
        session,
        audit_chain.AuditEvent(
            action="escalate",
            username="system:overdue-sweeper",
            role="system",
            institution=code_of.get(row.pool_id),
            patient=None
            if patient is None
            else (f"{patient[0]}^^^{patient[1]}" if patient[1] else str(patient[0])),
            object_type="study",
            object_id=row.study_uid,
            detail={
                **detail,
                "rule": rule,
                "from_pool": code_of.get(row.pool_id),
                "to_pool": code_of.get(to_pool_id),
            },
        ),
    )
