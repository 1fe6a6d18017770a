"""The reader's (and the township's) worklist."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from remote_dx.api.deps import CurrentUser, DbSession
from remote_dx.core.models import Priority, WorklistStatus
from remote_dx.worklist.schemas import WorklistPage
from remote_dx.worklist.service import MAX_PAGE, WorklistQuery, list_worklist

router = APIRouter(prefix="/api/v1", tags=["worklist"])


@router.get(
    "/worklist",
    summary="Worklist items visible to the current user, STAT first then by due time",
    description=(
        "Readers see their own institution's pool; technicians the studies their institution "
        "sent; administrators everything. Repeat a filter to allow several values "
        "(`?status=unread&status=claimed`)."
    ),
)
def get_worklist(
    user: CurrentUser,
    session: DbSession,
    status: Annotated[list[WorklistStatus] | None, Query()] = None,
    priority: Annotated[list[Priority] | None, Query()] = None,
    modality: Annotated[
        list[str] | None, Query(description="DICOM modality, e.g. DX, CR, ECG")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> WorklistPage:
    query = WorklistQuery(
        statuses=status or (),
        priorities=priority or (),
        modalities=modality or (),
        limit=limit,
        offset=offset,
    )
    return list_worklist(session, user, query)
