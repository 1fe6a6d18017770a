"""Statistics (issue 6): the dashboard tables as JSON, CSV or XLSX, the network tree, and the
recording of a recognised result's re-use. Logic in :mod:`remote_dx.stats`.

Who sees what: a statistician or an administrator sees every pool (and may narrow to a county or
a pool); a reader, senior reader or supervisor sees only the studies of their own pool; anyone
else gets 403.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Path, Query, Response
from fastapi.responses import JSONResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from remote_dx.api.deps import CurrentUser, DbSession
from remote_dx.core import errors
from remote_dx.core.models import Institution, Role, User
from remote_dx.stats import export
from remote_dx.stats.queries import (
    TABLES,
    Dimension,
    StatsQuery,
    Table,
    UnknownTable,
    network,
    network_table,
    table,
)
from remote_dx.stats.recording import record_use
from remote_dx.stats.sql import Period

router = APIRouter(prefix="/api/v1", tags=["stats"])

ALL_POOLS = frozenset({Role.STATISTICIAN, Role.ADMIN})
OWN_POOL = frozenset({Role.READER, Role.SENIOR_READER, Role.SUPERVISOR})
MAX_DAY_BUCKETS = 1000

_RESPONSES: dict[int | str, dict[str, Any]] = {
    403: {"description": "Not a statistician, administrator or reader"},
    404: {"description": "Unknown table, county or pool"},
    422: {"description": "Bad period, dimension, dates or format"},
}

PeriodParam = Annotated[
    str, Query(description="day | week (ISO, by its Monday) | month | year | all (Asia/Shanghai)")
]
ByParam = Annotated[
    str | None, Query(description="township | county | pool | modality | reader; omitted: total")
]
FromParam = Annotated[
    date | None, Query(alias="from", description="first day received (Asia/Shanghai), inclusive")
]
ToParam = Annotated[date | None, Query(alias="to", description="last day, inclusive")]
ModalityParam = Annotated[
    str | None, Query(max_length=16, description="ecg | imaging | a modality code (DX)")
]
CountyParam = Annotated[str | None, Query(max_length=64, description="a county's code")]
PoolParam = Annotated[
    str | None, Query(max_length=64, description="a pool's code (statistician/admin)")
]
FormatParam = Annotated[str, Query(alias="format", description="json | csv | xlsx")]


@dataclass(frozen=True)
class Filters:
    """The query parameters every statistics endpoint shares, as the request gave them."""

    period: str = "month"
    by: str | None = None
    start: date | None = None
    end: date | None = None
    modality: str | None = None
    county: str | None = None
    pool: str | None = None


def _filters(
    period: PeriodParam = "month",
    by: ByParam = None,
    start: FromParam = None,
    end: ToParam = None,
    modality: ModalityParam = None,
    county: CountyParam = None,
    pool: PoolParam = None,
) -> Filters:
    return Filters(period, by, start, end, modality, county, pool)


StatsFilters = Annotated[Filters, Depends(_filters)]


def _institution_id(session: Session, code: str, what: str) -> int:
    found = session.scalar(select(Institution.id).where(Institution.code == code.strip()))
    if found is None:
        raise errors.NotFound(f"no {what} with code {code!r}")
    return int(found)


def _query(session: Session, user: User, filters: Filters) -> StatsQuery:
    period, by, start, end = filters.period, filters.by, filters.start, filters.end
    pool, county = filters.pool, filters.county
    role = Role(user.role)
    if role not in ALL_POOLS | OWN_POOL:
        raise errors.Forbidden(f"a {role.value} does not see statistics")
    try:
        chosen_period = None if period == "all" else Period(period)
    except ValueError:
        raise errors.Invalid(f"period {period!r}: use day, week, month, year or all") from None
    try:
        dimension = Dimension(by) if by else None
    except ValueError:
        names = ", ".join(d.value for d in Dimension)
        raise errors.Invalid(f"by {by!r}: use one of {names}") from None
    if start and end and end < start:
        raise errors.Invalid("'to' is before 'from'")
    if chosen_period is Period.DAY and start and end and (end - start).days > MAX_DAY_BUCKETS:
        raise errors.Invalid(f"at most {MAX_DAY_BUCKETS} days by day; use week or month")
    pool_id = _institution_id(session, pool, "pool") if pool else None
    if role in OWN_POOL:
        if pool_id is not None and pool_id != user.institution_id:
            raise errors.Forbidden("a reader sees the statistics of their own pool only")
        pool_id = user.institution_id
    return StatsQuery(
        period=chosen_period,
        by=dimension,
        start=start,
        end=end,
        modality=filters.modality or None,
        county_id=_institution_id(session, county, "county") if county else None,
        pool_id=pool_id,
    )


def _answer(tables: list[Table], fmt: str, filename: str) -> Response:
    if fmt == "json":
        data = [t.as_dict() for t in tables]
        return JSONResponse(data[0] if len(data) == 1 else {"tables": data})
    if fmt not in export.MEDIA_TYPES:
        raise errors.Invalid(f"format {fmt!r}: use json, csv or xlsx")
    if fmt == "csv":
        if len(tables) != 1:
            raise errors.Invalid("csv holds one table; use xlsx for several (one sheet each)")
        body = export.to_csv(tables[0])
    else:
        body = export.to_xlsx(tables)
    name = f"{filename}.{fmt}"
    return Response(
        body,
        media_type=export.MEDIA_TYPES[fmt],
        headers={"Content-Disposition": f"attachment; filename*=UTF-8''{quote(name)}"},
    )


@router.get(
    "/stats/tables", summary="The statistics tables and their columns", responses=_RESPONSES
)
def catalogue(user: CurrentUser, session: DbSession) -> list[dict[str, Any]]:
    # The columns without the figures: one empty day, which the time indexes answer at once.
    epoch = date(1970, 1, 1)
    query = _query(session, user, Filters(period="all", start=epoch, end=epoch))
    return [{k: v for k, v in table(session, name, query).as_dict().items() if k != "rows"}
            for name in TABLES]  # fmt: skip


@router.get(
    "/stats/network",
    summary="The referral tree with studies sent and read per institution",
    responses=_RESPONSES,
)
def network_tree(
    user: CurrentUser,
    session: DbSession,
    start: FromParam = None,
    end: ToParam = None,
    modality: ModalityParam = None,
    fmt: FormatParam = "json",
) -> Response:
    query = _query(session, user, Filters(period="all", start=start, end=end, modality=modality))
    tree = network(session, query)
    if fmt == "json":
        return JSONResponse(tree)
    return _answer([network_table(tree)], fmt, "network")


@router.get(
    "/stats/dashboard",
    summary="Every table at once (JSON), or one workbook with a sheet per table (xlsx)",
    responses=_RESPONSES,
)
def dashboard(
    user: CurrentUser, session: DbSession, filters: StatsFilters, fmt: FormatParam = "json"
) -> Response:
    query = _query(session, user, filters)
    tables = [table(session, name, query) for name in TABLES]
    if fmt == "xlsx":
        tables.append(network_table(network(session, query)))
    return _answer(tables, fmt, "statistics")


def _one(user: User, session: Session, name: str, filters: Filters, fmt: str) -> Response:
    query = _query(session, user, filters)
    try:
        result = table(session, name, query)
    except UnknownTable as exc:
        raise errors.NotFound(str(exc)) from exc
    return _answer([result], fmt, name)


TableName = Annotated[str, Path(max_length=32, description=", ".join(TABLES))]


@router.get("/stats/{name}", summary="One statistics table", responses=_RESPONSES)
def stats_table(
    user: CurrentUser,
    session: DbSession,
    name: TableName,
    filters: StatsFilters,
    fmt: FormatParam = "json",
) -> Response:
    return _one(user, session, name, filters, fmt)


@router.get(
    "/stats/{name}/export", summary="One statistics table as CSV or XLSX", responses=_RESPONSES
)
def stats_export(
    user: CurrentUser,
    session: DbSession,
    name: TableName,
    filters: StatsFilters,
    fmt: FormatParam = "xlsx",
) -> Response:
    if fmt == "json":
        raise errors.Invalid("export is csv or xlsx")
    return _one(user, session, name, filters, fmt)


@router.post(
    "/recognition/{verify_code}/use",
    tags=["recognition"],
    summary="结果互认: this institution accepted the result instead of a new exam",
    status_code=201,
    responses={
        200: {"description": "Already recorded for this institution"},
        403: {"description": "A role that does not take exams"},
        404: {"description": "No signed result with this code"},
        422: {"description": "The result is not final or was withdrawn"},
    },
)
def recognition_use(
    user: CurrentUser,
    session: DbSession,
    verify_code: Annotated[str, Path(min_length=4, max_length=16)],
) -> JSONResponse:
    use, created = record_use(session, user, verify_code)
    body = {
        "id": use.id,
        "verify_code": verify_code,
        "exam": use.exam,
        "institution_id": use.institution_id,
        "used_at": use.used_at.isoformat().replace("+00:00", "Z"),
        "created": created,
    }
    return JSONResponse(body, status_code=201 if created else 200)
