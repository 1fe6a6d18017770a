"""Worklist and study queries, scoped to what the asking user may see.

Scoping lives in one place, :func:`visibility`, so every read path (worklist, study, later
DICOMweb and exports) applies the same rule:

- readers, senior readers and supervisors see the studies routed to their own institution's pool;
- technicians see the studies their own institution sent (so a township follows its studies);
- administrators see everything;
- any other role (statisticians read aggregates, not patients) sees no patient data.

Each listing is one SELECT with joins (no per-row queries) plus one COUNT (reused for a few
seconds when it is large, see :data:`COUNT_CACHE_MIN`); the filters and the order use indexed
columns (``worklist_items.pool_id/status/due_at``, ``studies.origin_id``, ``series.study_pk``).
The statements of the hot reads are built once per query shape and reused with bound values.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import psycopg
from sqlalchemy import (
    ColumnElement,
    Integer,
    Select,
    bindparam,
    case,
    exists,
    false,
    func,
    literal_column,
    or_,
    select,
    text,
    true,
    union_all,
)
from sqlalchemy.orm import Session, aliased

from remote_dx.core.clock import utcnow
from remote_dx.core.models import (
    ECGAnalysisRecord,
    Instance,
    Institution,
    Patient,
    Priority,
    Role,
    Series,
    Study,
    User,
    WorklistItem,
    WorklistStatus,
)
from remote_dx.core.psycopg_statements import PsycopgQuery, Started
from remote_dx.worklist.schemas import (
    ECGSummary,
    InstanceView,
    PatientView,
    RoutingView,
    SeriesView,
    StudyDetail,
    WorklistCounts,
    WorklistEntry,
    WorklistPage,
)

READER_ROLES = frozenset({Role.READER, Role.SENIOR_READER, Role.SUPERVISOR})
MAX_PAGE = 500

# STAT first, then urgent, then routine.
PRIORITY_RANK = case(
    {Priority.STAT.value: 0, Priority.URGENT.value: 1, Priority.ROUTINE.value: 2},
    value=WorklistItem.priority,
    else_=3,
)

_origin = aliased(Institution, name="origin")
_pool = aliased(Institution, name="pool")
_holder = aliased(User, name="holder")

# ``sort`` values: the worklist's default (most urgent first), or one time column.
SORTS = ("priority,due_at", "due_at", "received_at", "-received_at")


def visibility(user: User) -> ColumnElement[bool]:
    """The condition a study must meet for ``user`` to see it.

    Used on queries over ``studies`` outer-joined to ``worklist_items``: a study not yet routed
    has a NULL pool and so is visible to readers of no pool.
    """
    role = Role(user.role)
    if role is Role.ADMIN:
        return true()
    if role in READER_ROLES:
        return WorklistItem.pool_id == user.institution_id
    if role is Role.TECHNICIAN:
        return Study.origin_id == user.institution_id
    return false()


@dataclass(frozen=True)
class WorklistQuery:
    """Filters, order and paging of a worklist request (empty filter = no restriction).

    ``origins`` are institution codes; ``patient`` matches the patient ID exactly or any part of
    the decoded name (Chinese included); ``received_from`` ≤ received_at < ``received_to``.
    """

    statuses: Sequence[WorklistStatus] = ()
    priorities: Sequence[Priority] = ()
    modalities: Sequence[str] = ()
    origins: Sequence[str] = ()
    sections: Sequence[str] = ()
    patient: str | None = None
    received_from: datetime | None = None
    received_to: datetime | None = None
    overdue: bool | None = None
    sort: str = "priority,due_at"
    limit: int = 50
    offset: int = 0


def _first_series_modality() -> ColumnElement[str | None]:
    return (
        select(Series.modality)
        .where(Series.study_pk == Study.id, Series.modality.is_not(None))
        .order_by(Series.id)
        .limit(1)
        .correlate(Study)
        .scalar_subquery()
    )


def _needs_study(user: User, query: WorklistQuery) -> bool:
    return (
        Role(user.role) is Role.TECHNICIAN
        or bool(query.modalities or query.origins or query.patient)
        or query.received_from is not None
        or query.received_to is not None
        or query.sort.lstrip("-") == "received_at"
    )


def overdue_condition(now: datetime) -> ColumnElement[bool]:
    """Past its due time and not yet signed (what escalation and the counts call overdue)."""
    return (WorklistItem.due_at < now) & (WorklistItem.status != WorklistStatus.SIGNED)


def _filtered(
    statement: Select,  # type: ignore[type-arg]
    user: User,
    query: WorklistQuery,
    *,
    now: datetime | None = None,
    with_status: bool = True,
) -> Select:  # type: ignore[type-arg]
    """Add the scope and filters to a statement over ``worklist_items``, joining ``studies`` only
    when the scope or a filter needs it (neither SQLite nor PostgreSQL drops an unused join).

    Origin and patient filters are ``IN (subquery)`` on the study's indexed foreign keys, so the
    page query still sorts narrow rows.
    """
    if _needs_study(user, query):
        statement = statement.join(Study, Study.id == WorklistItem.study_pk)
    statement = statement.where(visibility(user))
    if with_status and query.statuses:
        statement = statement.where(WorklistItem.status.in_(list(query.statuses)))
    if query.priorities:
        statement = statement.where(WorklistItem.priority.in_(list(query.priorities)))
    if query.modalities:
        # The series carry the modality as sent; Study.modalities is filled only by processing.
        wanted = sorted({m.strip().upper() for m in query.modalities if m.strip()})
        statement = statement.where(
            exists().where(Series.study_pk == Study.id, Series.modality.in_(wanted))
        )
    if query.origins:
        codes = sorted({c.strip().upper() for c in query.origins if c.strip()})
        statement = statement.where(
            Study.origin_id.in_(select(Institution.id).where(Institution.code.in_(codes)))
        )
    if query.sections:
        statement = statement.where(WorklistItem.section.in_(list(query.sections)))
    if query.patient:
        text = query.patient.strip()
        statement = statement.where(
            Study.patient_pk.in_(
                select(Patient.id).where(
                    or_(Patient.patient_id == text, Patient.name.icontains(text, autoescape=True))
                )
            )
        )
    if query.received_from is not None:
        statement = statement.where(Study.received_at >= query.received_from)
    if query.received_to is not None:
        statement = statement.where(Study.received_at < query.received_to)
    if query.overdue is not None:
        late = overdue_condition(now or utcnow())
        statement = statement.where(late if query.overdue else ~late)
    return statement


def _sort_keys(sort: str) -> list[tuple[str, ColumnElement[Any], bool]]:
    """(label, expression, descending) in order; the item id breaks ties so paging is stable."""
    if sort == "due_at":
        keys = [("due_at", WorklistItem.due_at, False)]
    elif sort == "received_at":
        keys = [("received_at", Study.received_at, False)]
    elif sort == "-received_at":
        keys = [("received_at", Study.received_at, True)]
    else:
        keys = [("rank", PRIORITY_RANK, False), ("due_at", WorklistItem.due_at, False)]
    return [*keys, ("item_id", WorklistItem.id, sort == "-received_at")]


def _page_keys(
    user: User,
    query: WorklistQuery,
    keys: list[tuple[str, ColumnElement[Any], bool]],
    *,
    limit: int,
    offset: int,
    now: datetime,
) -> Any:
    """The page's sort keys and item ids, as a subquery named ``page``.

    The default order (priority rank, due time, id) cannot be read off an index: the rank is a
    CASE over ``priority``, so the database would sort every visible item for each page (90,000
    in a county pool: most of a page's time). Instead each priority is one branch ordered by
    (due_at, id) — ``ix_worklist_items_pool_priority_due`` hands it over in that order — limited
    to ``offset + limit`` rows, and only those few are merged and sorted: the same rows in the
    same order, since the first ``offset + limit`` of the whole list are among the first
    ``offset + limit`` of their priority.
    """
    ordering = [expr.desc() if desc else expr for _, expr, desc in keys]
    if query.sort != "priority,due_at":
        return (
            _filtered(
                select(*[expr.label(label) for label, expr, _ in keys]).select_from(WorklistItem),
                user,
                query,
                now=now,
            )
            .order_by(*ordering)
            .limit(limit)
            .offset(offset)
            .subquery("page")
        )
    wanted = [p for p in Priority if not query.priorities or p in query.priorities]
    branches = []
    for rank, priority in enumerate(Priority):
        if priority not in wanted:
            continue
        branch = (
            _filtered(
                select(
                    literal_column(str(rank)).label("rank"),
                    WorklistItem.due_at.label("due_at"),
                    WorklistItem.id.label("item_id"),
                ).select_from(WorklistItem),
                user,
                query,
                now=now,
            )
            .where(WorklistItem.priority == priority)
            .order_by(WorklistItem.due_at, WorklistItem.id)
            .limit(offset + limit)
            .subquery(f"p{rank}")
        )
        # SQLite admits no ORDER BY/LIMIT on a compound's members: each is a subquery.
        branches.append(select(branch.c.rank, branch.c.due_at, branch.c.item_id))
    merged = union_all(*branches).subquery("ranked")
    return (
        select(merged.c.rank, merged.c.due_at, merged.c.item_id)
        .order_by(merged.c.rank, merged.c.due_at, merged.c.item_id)
        .limit(limit)
        .offset(offset)
        .subquery("page")
    )


def list_worklist(session: Session, user: User, query: WorklistQuery) -> WorklistPage:
    """The worklist page ``user`` may see, in the order ``query.sort`` asks (default: STAT
    first, then by due time).

    One statement: the page is chosen on narrow ``worklist_items`` rows (sorting a pool of tens
    of thousands of items costs little there), and only the page's rows are joined to the study,
    patient, institution and lease-holder names.
    """
    if query.sort not in SORTS:
        raise ValueError(f"unknown sort {query.sort!r}; use one of {', '.join(SORTS)}")
    now = utcnow()
    shape = query_shape(user, query)
    statement = _page_statements.get(shape) if shape is not None else None
    if statement is None:
        statement = _page_statement(user, query, now)
        if shape is not None:
            if len(_page_statements) > 1_000:
                _page_statements.clear()
            _page_statements[shape] = statement
    # Plain columns on the session's connection: the ORM's statement handling cost more CPU
    # than these reads' own work in the database.
    rows = session.connection().execute(statement).all()
    return WorklistPage(
        items=[_entry(row._mapping, now) for row in rows],
        total=_total(session, user, query, now, shape),
    )


_JOINS_AS_WRITTEN_SQL = (
    "SELECT set_config('join_collapse_limit', '1', true), "
    "set_config('from_collapse_limit', '1', true)"
)
_JOINS_AS_WRITTEN = text(_JOINS_AS_WRITTEN_SQL)
_JOINS_AS_WRITTEN_GENERIC = text(
    _JOINS_AS_WRITTEN_SQL + ", set_config('plan_cache_mode', 'force_generic_plan', true)"
)


def plan_joins_as_written(session: Session, *, generic: bool = False) -> None:
    """For the rest of ``session``'s transaction, PostgreSQL joins in the order the statements
    are written instead of searching every join order; with ``generic``, a statement psycopg
    has prepared runs its generic plan instead of being planned again for its values.

    The hot reads' statements are written in their best order (the page's few item ids first,
    then one primary-key lookup per joined table; the study by its UID first), and the search
    was most of their cost: the page statement (three branches, seven joins) took ~5 ms of
    PostgreSQL CPU per request with the search and ~1.5 ms without, for the same plan and
    rows. psycopg prepares a statement on a connection once it has run five times there (and
    keeps it while transactions end in COMMIT: :func:`remote_dx.api.deps.hot_read`), but
    PostgreSQL still plans a prepared statement for each call's values while their plans look
    cheaper than the generic one, which for the page they always do (its LIMIT is a
    parameter): measured on 100,000 studies, generic plans took the page from 1.9 to 1.1 ms of
    PostgreSQL CPU. Only for statements whose best plan does not depend on the values (a
    primary key, a UID, a pool): with a patient-name or a date-range filter the generic plan
    was 9-10 times slower than the custom one (:func:`plan_is_value_independent`).
    Per transaction, for the hot reads only.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.connection().execute(_JOINS_AS_WRITTEN_GENERIC if generic else _JOINS_AS_WRITTEN)


def plan_is_value_independent(query: WorklistQuery) -> bool:
    """Whether the page statement of ``query`` plans the same whatever its values: only scope,
    status, priority and section (equalities on indexed columns), order and paging."""
    return not (
        query.modalities
        or query.origins
        or query.patient
        or query.received_from is not None
        or query.received_to is not None
        or query.overdue is not None
    )


# Building the page statement (three branches, seven joins) and its cache key took more CPU
# than running it: statements are kept per query shape — the user's scope and every filter,
# order and paging value — unless they depend on the time (the overdue filter).
_page_statements: dict[tuple[Any, ...], Any] = {}


def query_shape(user: User, query: WorklistQuery) -> tuple[Any, ...] | None:
    """The user's scope and every filter, order and paging value of ``query``; None when the
    query depends on the time (the overdue filter)."""
    if query.overdue is not None:
        return None
    return (
        Role(user.role),
        user.institution_id,
        tuple(query.statuses),
        tuple(query.priorities),
        tuple(query.modalities),
        tuple(query.origins),
        tuple(query.sections),
        query.patient,
        query.received_from,
        query.received_to,
        query.sort,
        query.limit,
        query.offset,
    )


def _page_statement(user: User, query: WorklistQuery, now: datetime) -> Any:
    limit = max(1, min(query.limit, MAX_PAGE))
    offset = max(0, query.offset)
    keys = _sort_keys(query.sort)
    page = _page_keys(user, query, keys, limit=limit, offset=offset, now=now)
    return (
        select(
            Study.study_uid,
            Patient.patient_id,
            Patient.name.label("patient_name"),
            Patient.sex.label("patient_sex"),
            Patient.birth_date.label("patient_birth_date"),
            func.coalesce(Study.modalities, _first_series_modality()).label("modality"),
            Study.description.label("study_description"),
            _origin.name.label("origin"),
            _pool.name.label("pool"),
            WorklistItem.priority,
            WorklistItem.status,
            Study.received_at,
            WorklistItem.due_at,
            Study.num_instances,
            WorklistItem.section,
            _holder.full_name.label("claimed_by"),
            WorklistItem.lease_expires_at,
            WorklistItem.escalation_level,
            WorklistItem.version,
            ECGAnalysisRecord.status.label("ecg_status"),
            ECGAnalysisRecord.heart_rate.label("ecg_heart_rate"),
            ECGAnalysisRecord.rhythm.label("ecg_rhythm"),
            ECGAnalysisRecord.critical.label("ecg_critical"),
            ECGAnalysisRecord.technically_unsatisfactory.label("ecg_unsatisfactory"),
        )
        .select_from(page)
        .join(WorklistItem, WorklistItem.id == page.c.item_id)
        .join(Study, Study.id == WorklistItem.study_pk)
        .join(Patient, Patient.id == Study.patient_pk)
        .join(_origin, _origin.id == Study.origin_id)
        .join(_pool, _pool.id == WorklistItem.pool_id)
        .outerjoin(_holder, _holder.id == WorklistItem.claimed_by_id)
        # ECG studies carry their analysis summary (one row per study: study_pk is unique).
        .outerjoin(ECGAnalysisRecord, ECGAnalysisRecord.study_pk == Study.id)
        .order_by(*[page.c[label].desc() if desc else page.c[label] for label, _, desc in keys])
    )


# A busy pool's total is a count over tens of thousands of index entries (~8 ms of PostgreSQL
# CPU at 90,000 items, more than the whole page), asked again by every page and refresh. Totals
# of at least COUNT_CACHE_MIN items are therefore reused for COUNT_CACHE_SECONDS in the process:
# "12,345 items" a few seconds old tells a reader as much as an exact figure, and the page's items
# are always current (a page kept by worklist.page_cache is one its pool has not changed since).
# Smaller totals (cheap to count, and where one item shows) are exact.
COUNT_CACHE_MIN = 1_000
COUNT_CACHE_SECONDS = 5.0
_totals: dict[tuple[Any, ...], tuple[float, int]] = {}
_count_statements: dict[tuple[Any, ...], Any] = {}


def _shape_no_overdue(user: User, query: WorklistQuery) -> tuple[Any, ...]:
    return query_shape(user, replace(query, overdue=None))[:-3]  # type: ignore[index]


def _total(
    session: Session,
    user: User,
    query: WorklistQuery,
    now: datetime,
    shape: tuple[Any, ...] | None,
) -> int:
    # The shape without order and paging (the same total for every page), or with the overdue
    # filter when there is one: a total a few seconds old is all the cache ever gives.
    base = shape[:-3] if shape is not None else (*_shape_no_overdue(user, query), query.overdue)
    key = (id(session.get_bind()), *base)
    cached = _totals.get(key)
    clock = time.monotonic()
    if cached is not None and clock - cached[0] < COUNT_CACHE_SECONDS:
        return cached[1]
    statement = _count_statements.get(base) if shape is not None else None
    if statement is None:
        statement = _filtered(select(func.count()).select_from(WorklistItem), user, query, now=now)
        if shape is not None:
            if len(_count_statements) > 1_000:
                _count_statements.clear()
            _count_statements[base] = statement
    total = int(session.connection().scalar(statement) or 0)
    if total >= COUNT_CACHE_MIN:
        if len(_totals) > 10_000:
            _totals.clear()
        _totals[key] = (clock, total)
    else:
        _totals.pop(key, None)
    return total


def count_worklist(session: Session, user: User, query: WorklistQuery) -> WorklistCounts:
    """Items per status (every status, zero included) and overdue ones, in ``user``'s scope and
    under ``query``'s filters other than status (so each tab of a worklist shows its count).
    One grouped statement."""
    now = utcnow()
    late = overdue_condition(now)
    rows = session.execute(
        _filtered(
            select(
                WorklistItem.status,
                func.count(),
                func.coalesce(func.sum(case((late, 1), else_=0)), 0),
            ).select_from(WorklistItem),
            user,
            query,
            now=now,
            with_status=False,
        ).group_by(WorklistItem.status)
    ).all()
    by_status = dict.fromkeys(WorklistStatus, 0)
    overdue = 0
    for status, count, late_count in rows:
        by_status[WorklistStatus(status)] = int(count)
        overdue += int(late_count)
    return WorklistCounts(by_status=by_status, overdue=overdue, total=sum(by_status.values()))


def _entry(row: Any, now: datetime) -> WorklistEntry:
    ecg = None
    if row["ecg_status"] is not None:
        ecg = ECGSummary(
            status=str(row["ecg_status"]),
            heart_rate=row["ecg_heart_rate"],
            rhythm=row["ecg_rhythm"],
            critical=bool(row["ecg_critical"]),
            technically_unsatisfactory=bool(row["ecg_unsatisfactory"]),
        )
    overdue = row["due_at"] < now and row["status"] != WorklistStatus.SIGNED
    # The columns already have the model's types (the ORM's column types convert them), so the
    # entry is constructed, not validated: validating 50 entries × 20 fields was a good part of
    # a page's CPU. The answer is serialised by the same model serializer either way.
    return WorklistEntry.model_construct(**{**row, "ecg": ecg, "overdue": overdue})


def get_study(session: Session, user: User, study_uid: str) -> StudyDetail | None:
    """The study with its series and instances, or None if it does not exist *or* ``user``
    may not see it (callers answer 404 for both, so existence is not revealed)."""
    statement = _study_statements.get(_scope_kind(user))
    if statement is None:
        statement = _study_statements[_scope_kind(user)] = _study_statement(_scope_kind(user))
    connection = session.connection()  # plain columns: no ORM statement handling needed
    row = connection.execute(
        statement, {"study_uid": study_uid, "scope_id": user.institution_id}
    ).one_or_none()
    if row is None:
        return None
    # Series and instances in one statement of plain columns (no ORM objects, no second query
    # for the instances): a viewer opens studies one after another.
    rows = connection.execute(_SERIES_STATEMENT, {"study_pk": row.id}).all()
    return _study_detail(row, rows)


def get_study_by_cursor(
    cursor: psycopg.Cursor[Any], user: User, study_uid: str
) -> StudyDetail | None:
    """:func:`get_study` on PostgreSQL through psycopg's own cursor
    (:func:`remote_dx.api.deps.hot_cursor`): the same statements and rows, without
    SQLAlchemy's per-statement handling."""
    query = _study_query(_scope_kind(user))
    row = query.first(cursor, {"study_uid": study_uid, "scope_id": user.institution_id})
    if row is None:
        return None
    return _study_detail(row, _SERIES_QUERY.rows(cursor, {"study_pk": row.id}))


@dataclass(frozen=True)
class StartedStudyRead:
    """:func:`start_study_read`'s statements, sent, their rows still to read."""

    study: Started
    series: Started

    def detail(self) -> StudyDetail | None:
        row, rows = self.study.first(), self.series.rows()
        return None if row is None else _study_detail(row, rows)


def start_study_read(
    connection: psycopg.Connection[Any], role: str, institution_id: int | None, study_uid: str
) -> StartedStudyRead:
    """Send :func:`get_study_by_cursor`'s reads for a user of this role and institution, the
    series by the study's UID rather than its key, so that both can go in one pipeline with the
    user's own read (:func:`remote_dx.api.deps.authenticate_pipelined`). The series of a study
    the user may not see are read and dropped: :meth:`StartedStudyRead.detail` is None then."""
    return StartedStudyRead(
        _study_query(_scope_kind_of(Role(role))).start(
            connection, {"study_uid": study_uid, "scope_id": institution_id}
        ),
        _SERIES_BY_UID_QUERY.start(connection, {"study_uid": study_uid}),
    )


def _study_detail(row: Any, rows: Sequence[Any]) -> StudyDetail:
    """The answer from the study's row and its series-and-instances rows."""
    grouped: dict[int, tuple[Any, list[Any]]] = {}
    for line in rows:
        entry = grouped.setdefault(line.series_pk, (line, []))
        if line.instance_pk is not None:
            entry[1].append(line)
    return StudyDetail(
        study_uid=row.study_uid,
        accession_number=row.accession_number,
        study_date=row.study_date,
        study_time=row.study_time,
        description=row.description,
        modalities=row.modalities,
        body_part=row.body_part,
        origin=row.origin_name,
        status=row.status,
        received_at=row.received_at,
        last_received_at=row.last_received_at,
        processed_at=row.processed_at,
        num_instances=row.num_instances,
        validation_problems=list(row.validation_problems or []),
        preview_available=row.preview_key is not None,
        patient=PatientView(
            patient_id=row.patient_id,
            issuer=row.issuer,
            name=row.patient_name,
            sex=row.sex,
            birth_date=row.birth_date,
        ),
        series=[
            SeriesView(
                series_uid=first.series_uid,
                modality=first.modality,
                series_number=first.series_number,
                description=first.description,
                body_part=first.body_part,
                instances=[
                    InstanceView(
                        sop_instance_uid=i.sop_instance_uid,
                        sop_class_uid=i.sop_class_uid,
                        transfer_syntax_uid=i.transfer_syntax_uid,
                        instance_number=i.instance_number,
                        size_bytes=i.size_bytes,
                    )
                    for i in sorted(
                        instances,
                        key=lambda i: (
                            i.instance_number is None,
                            i.instance_number or 0,
                            i.instance_pk,
                        ),
                    )
                ],
            )
            for first, instances in grouped.values()
        ],
        worklist_item=None
        if row.item_id is None
        else RoutingView(
            pool=row.pool_name,
            priority=row.priority,
            status=row.item_status,
            routed_at=row.routed_at,
            due_at=row.due_at,
            routing_rule=row.routing_rule,
        ),
        ecg=None
        if row.ecg_id is None
        else ECGSummary(
            status=str(row.ecg_status),
            heart_rate=row.heart_rate,
            rhythm=row.rhythm,
            critical=row.critical,
            technically_unsatisfactory=row.technically_unsatisfactory,
        ),
    )


# The study view's statements are built once per kind of scope, with the study and the scope as
# bound parameters: building a 34-column statement and its cache key on every request cost more
# CPU than the database spent answering it.
def _scope_kind(user: User) -> str:
    return _scope_kind_of(Role(user.role))


def _scope_kind_of(role: Role) -> str:
    if role is Role.ADMIN:
        return "all"
    if role in READER_ROLES:
        return "pool"
    if role is Role.TECHNICIAN:
        return "origin"
    return "none"


def _bound_visibility(kind: str) -> ColumnElement[bool]:
    """:func:`visibility` with the user's institution as the ``scope_id`` parameter."""
    scope_id = bindparam("scope_id", type_=Integer)
    if kind == "all":
        return true()
    if kind == "pool":
        return WorklistItem.pool_id == scope_id
    if kind == "origin":
        return Study.origin_id == scope_id
    return false()


_study_statements: dict[str, Any] = {}


def _study_statement(kind: str) -> Any:
    # Plain columns, not ORM entities: loading four mapped objects (identity map, instance
    # state) cost more CPU than the query on the database.
    return (
        select(
            Study.id,
            Study.study_uid,
            Study.accession_number,
            Study.study_date,
            Study.study_time,
            Study.description,
            Study.modalities,
            Study.body_part,
            Study.status,
            Study.received_at,
            Study.last_received_at,
            Study.processed_at,
            Study.num_instances,
            Study.validation_problems,
            Study.preview_key,
            Patient.patient_id,
            Patient.issuer,
            Patient.name.label("patient_name"),
            Patient.sex,
            Patient.birth_date,
            _origin.name.label("origin_name"),
            WorklistItem.id.label("item_id"),
            WorklistItem.priority,
            WorklistItem.status.label("item_status"),
            WorklistItem.routed_at,
            WorklistItem.due_at,
            WorklistItem.routing_rule,
            _pool.name.label("pool_name"),
            ECGAnalysisRecord.id.label("ecg_id"),
            ECGAnalysisRecord.status.label("ecg_status"),
            ECGAnalysisRecord.heart_rate,
            ECGAnalysisRecord.rhythm,
            ECGAnalysisRecord.critical,
            ECGAnalysisRecord.technically_unsatisfactory,
        )
        .join(Patient, Patient.id == Study.patient_pk)
        .join(_origin, _origin.id == Study.origin_id)
        .outerjoin(WorklistItem, WorklistItem.study_pk == Study.id)
        .outerjoin(_pool, _pool.id == WorklistItem.pool_id)
        .outerjoin(ECGAnalysisRecord, ECGAnalysisRecord.study_pk == Study.id)
        .where(Study.study_uid == bindparam("study_uid"), _bound_visibility(kind))
    )


def _series_statement(of_study: ColumnElement[bool]) -> Any:
    """A study's series and their instances, in series order."""
    return (
        select(
            Series.id.label("series_pk"),
            Series.series_uid,
            Series.modality,
            Series.series_number,
            Series.description,
            Series.body_part,
            Instance.id.label("instance_pk"),
            Instance.sop_instance_uid,
            Instance.sop_class_uid,
            Instance.transfer_syntax_uid,
            Instance.instance_number,
            Instance.size_bytes,
        )
        .outerjoin(Instance, Instance.series_pk == Series.id)
        .where(of_study)
        .order_by(Series.series_number.is_(None), Series.series_number, Series.id)
    )


_SERIES_STATEMENT = _series_statement(Series.study_pk == bindparam("study_pk"))
_SERIES_QUERY = PsycopgQuery(_SERIES_STATEMENT, "SeriesRow")
_SERIES_BY_UID_QUERY = PsycopgQuery(
    _series_statement(
        Series.study_pk
        == select(Study.id).where(Study.study_uid == bindparam("study_uid")).scalar_subquery()
    ),
    "SeriesRow",
)
_study_queries: dict[str, PsycopgQuery] = {}


def _study_query(kind: str) -> PsycopgQuery:
    """:func:`_study_statement` of a scope kind, compiled for psycopg once."""
    query = _study_queries.get(kind)
    if query is None:
        query = _study_queries[kind] = PsycopgQuery(_study_statement(kind), "StudyRow")
    return query
