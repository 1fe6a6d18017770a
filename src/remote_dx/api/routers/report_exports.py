"""A study's signed report as it travels: PDF, FHIR DiagnosticReport, and its deliveries.

Visible to the readers of the pool that signed it (or that it is routed to, or consulted), and
to the users of the township that sent the study (结果互认: the township sees its results);
anyone else gets 404, as for a study that does not exist.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Response, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from remote_dx.api.deps import AppSettings, CurrentUser, DbSession, Store
from remote_dx.core.models import Study, User
from remote_dx.reporting.export import delivery as delivery_module
from remote_dx.reporting.export.service import (
    deliveries_of,
    report_fhir,
    report_pdf,
    visible_study,
)
from remote_dx.reporting.export.view import NoSignedReport, SignedReportView, load_view

router = APIRouter(prefix="/api/v1", tags=["results"])

# The reporting service calls our hook when a report is signed or amended.
delivery_module.register_hooks()

StudyUID = Annotated[
    str, Path(min_length=1, max_length=64, pattern=r"^[0-9.]+$", description="Study Instance UID")
]
FHIR_JSON = "application/fhir+json"


class DeliveryView(BaseModel):
    id: int
    version: int
    channel: str
    target: str | None
    status: str
    attempts: int
    error: str | None
    created_at: datetime
    delivered_at: datetime | None


def _study(session: DbSession, user: User, study_uid: str) -> Study:
    study = visible_study(session, user, study_uid)
    if study is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"study {study_uid} not found")
    return study


def _view(session: DbSession, study: Study, settings: AppSettings) -> SignedReportView:
    try:
        return load_view(session, study.study_uid, settings=settings)
    except NoSignedReport as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc)) from exc


@router.get(
    "/studies/{study_uid}/report.pdf",
    summary="The signed report as PDF (Chinese fonts embedded, verification QR code)",
    response_class=Response,
    responses={
        200: {"content": {"application/pdf": {}}},
        404: {"description": "No such study, not visible to this user, or not signed yet"},
    },
)
def report_as_pdf(
    study_uid: StudyUID, user: CurrentUser, session: DbSession, store: Store, settings: AppSettings
) -> Response:
    study = _study(session, user, study_uid)
    view = _view(session, study, settings)
    pdf = report_pdf(session, store, settings, view, study)
    filename = f"report-{study_uid}-v{view.version}.pdf"
    return Response(
        pdf,
        media_type="application/pdf",
        headers={"Content-Disposition": f'inline; filename="{filename}"'},
    )


@router.get(
    "/studies/{study_uid}/report/fhir",
    summary="The signed report as an HL7 FHIR R4 DiagnosticReport (contained resources, PDF)",
    responses={
        200: {"content": {FHIR_JSON: {}}},
        404: {"description": "No such study, not visible to this user, or not signed yet"},
    },
)
def report_as_fhir(
    study_uid: StudyUID, user: CurrentUser, session: DbSession, store: Store, settings: AppSettings
) -> JSONResponse:
    study = _study(session, user, study_uid)
    view = _view(session, study, settings)
    pdf = report_pdf(session, store, settings, view, study)
    return JSONResponse(report_fhir(view, pdf), media_type=FHIR_JSON)


@router.get(
    "/studies/{study_uid}/deliveries",
    summary="Where the signed report went: FHIR, DICOM PDF / SR to the township's PACS",
    responses={404: {"description": "No such study, or not visible to this user"}},
)
def list_deliveries(
    study_uid: StudyUID, user: CurrentUser, session: DbSession
) -> list[DeliveryView]:
    study = _study(session, user, study_uid)
    return [
        DeliveryView(
            id=d.id,
            version=d.version,
            channel=str(d.channel.value if hasattr(d.channel, "value") else d.channel),
            target=d.target,
            status=d.status,
            attempts=d.attempts,
            error=d.error,
            created_at=d.created_at,
            delivered_at=d.delivered_at,
        )
        for d in deliveries_of(session, study)
    ]
