"""The audit trail for administrators: search, CSV export, chain verification."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import Response
from pydantic import BaseModel

from remote_dx.api.deps import AdminUser, DbSession
from remote_dx.core import audit as chain
from remote_dx.core.clock import as_utc

router = APIRouter(prefix="/api/v1/audit", tags=["audit"])


class AuditEntry(BaseModel):
    seq: int
    recorded_at: str
    action: str
    outcome: int
    user_id: int | None
    username: str | None
    role: str | None
    institution: str | None
    patient: str | None
    object_type: str | None
    object_id: str | None
    client_address: str | None
    method: str | None
    path: str | None
    status_code: int | None
    detail: dict[str, Any]
    prev_hash: str
    hash: str


class ChainStatus(BaseModel):
    ok: bool
    records: int
    broken_seq: int | None
    reason: str | None


@router.get("", summary="Search the audit trail (newest first)")
def search_audit(
    _admin: AdminUser,
    session: DbSession,
    user: Annotated[str | None, Query(max_length=200, description="username, exact")] = None,
    patient: Annotated[
        str | None, Query(max_length=140, description="patient as 'PatientID^^^Issuer'")
    ] = None,
    action: Annotated[
        str | None, Query(max_length=32, description="e.g. login, view, sign")
    ] = None,
    object_id: Annotated[str | None, Query(max_length=200, description="e.g. a study UID")] = None,
    outcome: Annotated[int | None, Query(description="0 success, 4/8/12 failures")] = None,
    since: Annotated[
        datetime | None, Query(alias="from", description="ISO 8601, inclusive")
    ] = None,
    until: Annotated[datetime | None, Query(alias="to", description="ISO 8601, exclusive")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
    format: Annotated[str, Query(pattern="^(json|csv)$")] = "json",
) -> Any:
    query = chain.AuditQuery(
        user=user,
        patient=patient,
        action=action,
        object_id=object_id,
        outcome=outcome,
        since=as_utc(since) if since else None,
        until=as_utc(until) if until else None,
        limit=limit,
        offset=offset,
    )
    if format == "csv":
        # The export is every match in chain order (no paging), for the records office.
        text = chain.csv_text(chain.iter_records(session, query))
        return Response(
            text.encode("utf-8-sig"),  # with a BOM, so spreadsheet programs read the Chinese
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="audit.csv"'},
        )
    return [AuditEntry(**chain.as_row(r)) for r in chain.search(session, query)]


@router.get("/verify", summary="Check the hash chain of the whole audit trail")
def verify_audit(_admin: AdminUser, session: DbSession) -> ChainStatus:
    result = chain.verify_chain(session)
    return ChainStatus(
        ok=result.ok, records=result.records, broken_seq=result.broken_seq, reason=result.reason
    )
