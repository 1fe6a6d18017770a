"""The reader's (and the township's) worklist: listing, counts, and the reading lease."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from pydantic import BaseModel, Field

from remote_dx.api.audit import AuditedAnswer, audited_json_bytes
from remote_dx.api.deps import (
    READING_ROLES,
    AppSettings,
    CheckedToken,
    CurrentUser,
    DbSession,
    authenticate,
    authenticate_by_cursor,
    hot_cursor,
    hot_read,
    require_roles,
    run_hot,
)
from remote_dx.api.routers.studies import StudyUID
from remote_dx.core.clock import SHANGHAI, utcnow
from remote_dx.core.models import Priority, WorklistStatus
from remote_dx.worklist import lease
from remote_dx.worklist.page_cache import KeptPages, fresh_until, page_key
from remote_dx.worklist.schemas import LeaseView, WorklistCounts, WorklistPage
from remote_dx.worklist.service import (
    MAX_PAGE,
    SORTS,
    WorklistQuery,
    count_worklist,
    list_worklist,
    plan_is_value_independent,
    plan_joins_as_written,
)

router = APIRouter(prefix="/api/v1", tags=["worklist"])

_FILTERS_DOC = (
    "Readers see their own institution's pool; technicians the studies their institution "
    "sent; administrators everything. Repeat a filter to allow several values "
    "(`?status=unread&status=claimed`). `patient` matches the patient ID exactly or any part "
    "of the name (中文 included). `received_from`/`received_to` take an ISO time (UTC when no "
    "offset is given) or a date (a whole day in China time); the range includes `from` and "
    "excludes `to`."
)


def _instant(name: str, text: str | None) -> datetime | None:
    """An ISO 8601 time (UTC when it names no offset) or a bare date (midnight China time)."""
    if text is None:
        return None
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            # A bare date is a day as people here live it: midnight in Beijing time.
            return datetime.combine(day, time(0), tzinfo=SHANGHAI).astimezone(UTC)
        value = datetime.fromisoformat(text)
    except ValueError:
        raise HTTPException(
            422,
            detail=f"query parameter '{name}': not an ISO 8601 date or time: {text!r}",
        ) from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


async def worklist_query(  # no I/O: async, so FastAPI does not hop to its thread pool
    status: Annotated[list[WorklistStatus] | None, Query()] = None,
    priority: Annotated[list[Priority] | None, Query()] = None,
    modality: Annotated[
        list[str] | None, Query(description="DICOM modality, e.g. DX, CR, ECG")
    ] = None,
    origin: Annotated[
        list[str] | None, Query(description="Code of the sending institution, e.g. XIPING")
    ] = None,
    section: Annotated[list[str] | None, Query(description="Subspecialty section")] = None,
    patient: Annotated[
        str | None, Query(min_length=1, max_length=64, description="Patient ID or part of name")
    ] = None,
    received_from: Annotated[
        str | None, Query(max_length=40, description="2025-01-31 or 2025-01-31T08:00:00Z")
    ] = None,
    received_to: Annotated[str | None, Query(max_length=40)] = None,
    overdue: Annotated[bool | None, Query(description="Only (not) overdue items")] = None,
    sort: Annotated[
        str, Query(pattern="^(" + "|".join(SORTS) + ")$", description=" | ".join(SORTS))
    ] = "priority,due_at",
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> WorklistQuery:
    return WorklistQuery(
        statuses=status or (),
        priorities=priority or (),
        modalities=modality or (),
        origins=origin or (),
        sections=section or (),
        patient=patient,
        received_from=_instant("received_from", received_from),
        received_to=_instant("received_to", received_to),
        overdue=overdue,
        sort=sort,
        limit=limit,
        offset=offset,
    )


Filters = Annotated[WorklistQuery, Depends(worklist_query)]


@router.get(
    "/worklist",
    summary="Worklist items visible to the current user (default: STAT first, then by due time)",
    description=_FILTERS_DOC,
    response_model=WorklistPage,
)
async def get_worklist(request: Request, token: CheckedToken, query: Filters) -> Response:
    # The busiest read: the user and the page in one thread-pool call, which starts the audit
    # record; the answer waits for its commit on the event loop.
    answer = await run_hot("worklist", _worklist_answer, request, token, query)
    return await answer.when_written()


def _worklist_answer(request: Request, token: str, query: WorklistQuery) -> AuditedAnswer:
    kept: KeptPages = request.app.state.worklist_pages
    # The user and the pool's counter outside a transaction: a kept page then costs one round
    # trip, not two (the read-only COMMIT); on PostgreSQL through psycopg's own cursor.
    with hot_cursor(request, token) as cursor:
        if cursor is not None:
            user = authenticate_by_cursor(request, cursor, token)  # the pool's counter too
    if cursor is None:
        with hot_read(request, one_statement_each=True) as session:
            user = authenticate(request, session, token)
    version = request.state.pool_version  # read before the page, with the user
    key = None if version is None else page_key(user, query)
    now = utcnow()
    body = None if key is None else kept.get(key, version, now)
    if body is None:
        # A page read from the database, in a transaction: the SET LOCAL lasts for it.
        with hot_read(request) as session:
            plan_joins_as_written(session, generic=plan_is_value_independent(query))
            page = list_worklist(session, user, query)
        body = WorklistPage.__pydantic_serializer__.to_json(page)
        if key is not None:
            kept.put(key, version, fresh_until(page, now), body)
    return audited_json_bytes(request, body)


@router.get(
    "/worklist/counts",
    summary="Items per status and overdue items, in the user's scope",
    description="The same filters as the worklist except `status` (and paging/sort, ignored).",
)
def get_worklist_counts(user: CurrentUser, session: DbSession, query: Filters) -> WorklistCounts:
    return count_worklist(session, user, query)


# --- the reading lease ----------------------------------------------------------------------

_LEASE_RESPONSES: dict[int | str, dict[str, Any]] = {
    403: {"description": "Not a qualified reader of the pool (or not the holder / a supervisor)"},
    404: {"description": "No such worklist item, or not visible to this user"},
    409: {"description": "Held by another reader (`claimed_by`, `lease_expires_at`), or signed"},
}


class ReassignRequest(BaseModel):
    user: str = Field(min_length=1, max_length=64, description="Username of the new reader")


def _minutes(settings: Any) -> timedelta:
    return timedelta(minutes=settings.lease_minutes)


@router.post(
    "/worklist/{study_uid}/claim",
    summary="Claim a study for reading (a lease of RDX_LEASE_MINUTES; claiming again renews)",
    responses=_LEASE_RESPONSES,
    response_model=LeaseView,
)
def post_claim(
    study_uid: StudyUID, user: CurrentUser, session: DbSession, settings: AppSettings
) -> Any:
    return lease.claim(session, user, study_uid, lease=_minutes(settings))


@router.post(
    "/worklist/{study_uid}/renew",
    summary="Extend the lease you hold (draft autosave calls this)",
    dependencies=[Depends(require_roles(*READING_ROLES))],
    responses=_LEASE_RESPONSES,
    response_model=LeaseView,
)
def post_renew(
    study_uid: StudyUID, user: CurrentUser, session: DbSession, settings: AppSettings
) -> Any:
    return lease.renew(session, user, study_uid, lease=_minutes(settings))


@router.post(
    "/worklist/{study_uid}/release",
    summary="Give the study back (the holder, or a supervisor of the pool)",
    responses=_LEASE_RESPONSES,
    response_model=LeaseView,
)
def post_release(study_uid: StudyUID, user: CurrentUser, session: DbSession) -> Any:
    return lease.release(session, user, study_uid)


@router.post(
    "/worklist/{study_uid}/reassign",
    summary="Hand the study to a named qualified reader (a supervisor of the pool)",
    responses=_LEASE_RESPONSES,
    response_model=LeaseView,
)
def post_reassign(
    study_uid: StudyUID,
    body: ReassignRequest,
    user: CurrentUser,
    session: DbSession,
    settings: AppSettings,
) -> Any:
    return lease.reassign(session, user, study_uid, body.user, lease=_minutes(settings))
