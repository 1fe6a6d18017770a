"""One narrow fact row per study (``study_facts``) so every dashboard figure is one scan of one
table with a range predicate on a time, instead of studies ⋈ worklist items ⋈ reports ⋈ the
origin's tree ⋈ the first routing decision over every row (issue 6: p95 ≤ 300 ms at ~220,000
studies).

A fact row is *derived*: :func:`select_facts` is the single definition, the same joins the
figures used before, so a refreshed row can never disagree with the workflow's own tables.

Keeping it fresh:

- PostgreSQL: triggers (migration 0006_study_facts) on the tables the facts come from put the
  study's key in ``study_facts_dirty`` whenever a contributing column is written (inserts,
  Core ``UPDATE`` statements and ORM flushes alike, so no workflow path can forget it);
  :func:`refresh`, which every statistics query calls first, recomputes just those studies.
- SQLite (a single small hub, no triggers kept there): :func:`refresh` rebuilds every row; at
  SQLite volumes that costs less than one dashboard query did before.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, and_, case, delete, false, func, insert, select, text, true
from sqlalchemy.orm import Session, aliased

from remote_dx.core.models import (
    ECGAnalysisRecord,
    Institution,
    InstitutionLevel,
    ReacquireRequest,
    Report,
    ReportStatus,
    RoutingDecision,
    RoutingDecisionKind,
    Study,
    StudyFact,
    StudyFactDirty,
    WorklistItem,
)
from remote_dx.stats.sql import seconds_between

UPPER = (InstitutionLevel.COUNTY, InstitutionLevel.CITY, InstitutionLevel.PROVINCE)
READ_STATUSES = (ReportStatus.FINAL, ReportStatus.AMENDED)
REFRESH_LOCK = 0x5DF_0006  # pg_advisory_xact_lock key of the facts refresh

FACT_COLUMNS = (
    "study_pk",
    "received_at",
    "origin_id",
    "county_id",
    "modalities",
    "pool_id",
    "pool_level",
    "report_id",
    "is_read",
    "result_at",
    "signed_at",
    "signed_by_id",
    "positive",
    "critical",
    "first_due_at",
    "signed_claim_at",
    "tat_seconds",
    "claim_sign_seconds",
    "sla_met",
    "with_sla",
    "is_ecg",
    "analysed",
    "unsatisfactory",
    "sent_back",
)


def select_facts(study_pks: Any = None) -> Select[Any]:
    """The fact rows of the studies ``study_pks`` selects (a subquery of keys; None: all)."""
    origin = aliased(Institution, name="origin")
    parent = aliased(Institution, name="origin_parent")
    grand = aliased(Institution, name="origin_grand")
    pool_inst = aliased(Institution, name="pool_inst")
    due = select(
        RoutingDecision.study_pk.label("study_pk"),
        func.min(RoutingDecision.due_at).label("due_at"),
    ).where(RoutingDecision.kind == RoutingDecisionKind.INITIAL)
    if study_pks is not None:
        due = due.where(RoutingDecision.study_pk.in_(study_pks))
    first_due = due.group_by(RoutingDecision.study_pk).subquery("first_due")
    pool = func.coalesce(Report.pool_id, WorklistItem.pool_id)
    is_read = Report.status.in_(READ_STATUSES)
    result_at = func.coalesce(Report.confirmed_at, Report.signed_at)
    statement = (
        select(
            Study.id,
            Study.received_at,
            Study.origin_id,
            case(
                (origin.level.in_(UPPER), origin.id),
                (parent.level.in_(UPPER), parent.id),
                else_=grand.id,
            ),
            Study.modalities,
            pool,
            pool_inst.level,
            Report.id,
            # A study without a report is "not read" (False), as the old outer join counted it.
            case((is_read, true()), else_=false()),
            result_at,
            Report.signed_at,
            Report.signed_by_id,
            Report.positive,
            Report.critical,
            first_due.c.due_at,
            WorklistItem.signed_claim_at,
            case((is_read, seconds_between(result_at, Study.received_at)), else_=None),
            case(
                (
                    and_(is_read, WorklistItem.signed_claim_at.is_not(None)),
                    seconds_between(Report.signed_at, WorklistItem.signed_claim_at),
                ),
                else_=None,
            ),
            case((and_(is_read, result_at <= first_due.c.due_at), true()), else_=false()),
            case((and_(is_read, first_due.c.due_at.is_not(None)), true()), else_=false()),
            Study.modalities.like("%ECG%"),
            ECGAnalysisRecord.id.is_not(None),
            func.coalesce(ECGAnalysisRecord.technically_unsatisfactory, false()),
            ReacquireRequest.id.is_not(None),
        )
        .select_from(Study)
        .join(origin, origin.id == Study.origin_id)
        .outerjoin(parent, parent.id == origin.parent_id)
        .outerjoin(grand, grand.id == parent.parent_id)
        .outerjoin(WorklistItem, WorklistItem.study_pk == Study.id)
        .outerjoin(Report, Report.study_pk == Study.id)
        .outerjoin(pool_inst, pool_inst.id == pool)
        .outerjoin(first_due, first_due.c.study_pk == Study.id)
        .outerjoin(ECGAnalysisRecord, ECGAnalysisRecord.study_pk == Study.id)
        .outerjoin(ReacquireRequest, ReacquireRequest.study_pk == Study.id)
    )
    if study_pks is not None:
        statement = statement.where(Study.id.in_(study_pks))
    return statement


def rebuild(session: Session) -> int:
    """Recompute every fact row (no commit). Returns the number of rows."""
    session.execute(delete(StudyFact))
    session.execute(delete(StudyFactDirty))
    result = session.execute(insert(StudyFact).from_select(list(FACT_COLUMNS), select_facts()))
    return int(result.rowcount or 0)


def refresh(session: Session) -> int:
    """Bring ``study_facts`` up to date and commit; returns how many studies were recomputed.

    On PostgreSQL only the studies marked dirty since the last refresh are recomputed: the
    marks are taken with ``DELETE … RETURNING`` (a concurrent refresh waits for this one and
    then finds none), and a study written after the marks were taken is marked again by the
    triggers, so nothing is missed. Commits: the statistics read-only sessions own no other
    pending work, and an uncommitted refresh would be redone by every request.
    """
    if session.get_bind().dialect.name != "postgresql":
        count = rebuild(session)
        session.commit()
        return count
    # Refreshes take their turn (a transaction-scoped advisory lock), so two requests never
    # take overlapping marks in different orders and deadlock.
    session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": REFRESH_LOCK})
    pks = list(session.scalars(text("DELETE FROM study_facts_dirty RETURNING study_pk")).all())
    if not pks:
        session.commit()
        return 0
    for start in range(0, len(pks), 50_000):
        chunk = pks[start : start + 50_000]
        keys = select(text("unnest(CAST(:pks AS integer[]))")).scalar_subquery()
        # Core statements on the table: with a parameter dict an ORM insert is a bulk insert.
        table = StudyFact.__table__
        session.execute(delete(table).where(table.c.study_pk.in_(keys)), {"pks": chunk})
        session.execute(
            insert(table).from_select(list(FACT_COLUMNS), select_facts(keys)),
            {"pks": chunk},
        )
    session.commit()
    return len(pks)
