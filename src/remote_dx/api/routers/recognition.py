"""The recognition registry (结果互认): a member hospital asks which signed results of a patient
it can accept instead of examining again. Logic in :mod:`remote_dx.reporting.recognition`."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from remote_dx.api.deps import CurrentUser, DbSession
from remote_dx.api.routers.verify import _jsonable
from remote_dx.reporting.keys import load_signing_key
from remote_dx.reporting.recognition import lookup

router = APIRouter(prefix="/api/v1", tags=["recognition"])


@router.get(
    "/recognition",
    summary="A patient's recognisable signed results (final, upper-level reader, in validity)",
    description=(
        "Any logged-in user of a member institution. `exam`: a template code (chest-dx, "
        "limb-dx, imaging, ecg) or dx/cr/chest; omitted: every exam. Answers `results` "
        "(recognisable, newest first, each with `verify_code` and `signature_valid`) and "
        "`not_recognisable` (signed results that do not qualify, with the reason)."
    ),
    responses={422: {"description": "Unknown exam or missing patient_id"}},
)
def recognition(
    request: Request,
    _user: CurrentUser,
    session: DbSession,
    patient_id: Annotated[str, Query(min_length=1, max_length=64)],
    exam: Annotated[str | None, Query(max_length=32)] = None,
    issuer: Annotated[str | None, Query(max_length=64, description="Issuer of the ID")] = None,
) -> JSONResponse:
    key = load_signing_key(request.app.state.settings)
    answer = lookup(session, patient_id=patient_id, exam=exam, issuer=issuer, key=key)
    return JSONResponse(_jsonable(asdict(answer)))
