"""ECG upload from township carts and technicians; the preliminary analysis, the printout, the
leads for the browser viewer and the reader's confirmed values."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import (
    APIRouter,
    Depends,
    File,
    Form,
    Header,
    HTTPException,
    Path,
    Query,
    Request,
    Response,
    UploadFile,
    status,
)
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy import select

from remote_dx.api.deps import CurrentUser, DbSession, Store, current_user, unauthorized
from remote_dx.core.clock import utcnow
from remote_dx.core.models import AnalysisStatus, Institution, Priority, Role, User, WorklistItem
from remote_dx.ecg import service
from remote_dx.ecg.model import ECGError
from remote_dx.ecg.render import downsample_leads, render
from remote_dx.ecg.schemas import ConfirmedECG, ReacquireNotice, UploadAnswer
from remote_dx.ingest.ecg_upload import MAX_UPLOAD_BYTES, UploadForm, UploadRejected, upload_ecg
from remote_dx.ingest.instance import Sender
from remote_dx.reporting.drafts import follow_ecg_confirmation
from remote_dx.reporting.templates import ecg_prefill
from remote_dx.worklist.schemas import iso_utc

router = APIRouter(prefix="/api/v1", tags=["ecg"])

StudyUID = Annotated[
    str, Path(min_length=1, max_length=64, pattern=r"^[0-9.]+$", description="Study Instance UID")
]
DEVICE_KEY_HEADER = "X-Device-Key"


@dataclass(frozen=True)
class Uploader:
    sender: Sender
    institution_name: str


def uploader(
    request: Request,
    session: DbSession,
    device_key: Annotated[
        str | None,
        Header(alias=DEVICE_KEY_HEADER, description="API key of a registered ECG cart"),
    ] = None,
) -> Uploader:
    """A device key names a cart (its institution is the origin); otherwise the bearer must be
    a technician (their institution is the origin)."""
    if device_key is not None:
        device = service.device_for_key(session, device_key)
        if device is None:
            raise unauthorized(f"unknown or disabled device key ({DEVICE_KEY_HEADER})")
        return Uploader(Sender.of(device), device.institution.name)
    authorization = request.headers.get("Authorization", "")
    token = authorization[7:].strip() if authorization.lower().startswith("bearer ") else None
    user = current_user(request, session, token)
    if Role(user.role) is not Role.TECHNICIAN:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            detail=f"a {Role(user.role).value} cannot upload ECGs; technicians and carts "
            f"({DEVICE_KEY_HEADER}) can",
        )
    institution = session.get(Institution, user.institution_id)
    assert institution is not None
    # No device: the technician's institution is the origin, the calling AE stays empty.
    return Uploader(Sender(None, institution.id, institution.code, ""), institution.name)


@router.post(
    "/ecg",
    status_code=status.HTTP_201_CREATED,
    summary="Upload one ECG (one or more files forming one recording)",
    description=(
        "Multipart: `files` (repeat for WFDB `.hea` + `.dat`), optional `patient_id`, "
        "`patient_name`, `patient_sex` (M/F/O), `patient_birth_date` (YYYYMMDD), `priority`, "
        "and for CSV `sampling_rate` (Hz) and `units` (uV/mV). Authenticate as a technician "
        f"(bearer) or as a cart (`{DEVICE_KEY_HEADER}`). Answers 201 once the ECG is stored "
        "(the original files and a DICOM 12-lead waveform object). The study's UIDs derive from "
        "the upload's content, fields and origin, so resending the same upload (as an uploader "
        "does with the same `Idempotency-Key` after a lost answer) answers 201 with the same "
        "study and `duplicate: true`."
    ),
    responses={
        401: {"description": "No or bad credentials"},
        403: {"description": "Not a technician"},
        413: {"description": "Upload too large"},
        415: {"description": "Not an ECG format the hub reads"},
        422: {"description": "Not a usable ECG; the message says what is wrong"},
        503: {"description": "Storage or database unavailable; retry"},
    },
)
async def upload(
    who: Annotated[Uploader, Depends(uploader)],
    store: Store,
    request: Request,
    files: Annotated[list[UploadFile], File(description="the file(s) of one ECG")],
    patient_id: Annotated[str | None, Form(max_length=64)] = None,
    patient_name: Annotated[str | None, Form(max_length=200)] = None,
    patient_sex: Annotated[str | None, Form(max_length=16)] = None,
    patient_birth_date: Annotated[str | None, Form(max_length=16)] = None,
    priority: Annotated[Priority | None, Form()] = None,
    sampling_rate: Annotated[float | None, Form(gt=0, le=100000)] = None,
    units: Annotated[str | None, Form(max_length=16)] = None,
) -> UploadAnswer:
    parts: list[tuple[str, bytes]] = []
    total = 0
    for part in files:
        data = await part.read(MAX_UPLOAD_BYTES - total + 1)
        total += len(data)
        if total > MAX_UPLOAD_BYTES:
            raise HTTPException(
                413,  # the constant was renamed in Starlette 0.48 (CONTENT_TOO_LARGE)
                detail=f"upload exceeds {MAX_UPLOAD_BYTES} bytes per ECG",
            )
        parts.append((part.filename or "upload", data))
    form = UploadForm(
        patient_id=patient_id,
        patient_name=patient_name,
        patient_sex=patient_sex,
        patient_birth_date=patient_birth_date,
        priority=priority,
        sampling_rate=sampling_rate,
        units=units,
    )
    try:
        stored = await run_in_threadpool(
            upload_ecg,
            parts,
            form,
            store=store,
            sessions=request.app.state.sessions,
            sender=who.sender,
            institution_name=who.institution_name,
        )
    except UploadRejected as exc:
        raise HTTPException(exc.status, detail=str(exc)) from exc
    fields = asdict(stored)
    fields.pop("series_uid")
    return UploadAnswer(**fields)


def _ecg_study(session: DbSession, user: User, study_uid: str) -> Any:
    study = service.visible_study(session, user, study_uid)
    if study is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"study {study_uid} not found")
    try:
        service.waveform_instance(session, study)
    except service.NotAnECG as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc)) from exc
    return study


def _json(body: dict[str, Any], code: int = 200) -> JSONResponse:
    out = {k: iso_utc(v) if isinstance(v, datetime) else v for k, v in body.items()}
    return JSONResponse(out, status_code=code)


@router.get(
    "/ecg/{study_uid}/analysis",
    summary="The preliminary (machine) analysis: 202 while pending, 200 when done or failed",
    responses={
        202: {"description": 'Not analysed yet: `{"status": "pending"}`'},
        404: {"description": "No such ECG study, or not visible to this user"},
    },
)
def read_analysis(study_uid: StudyUID, user: CurrentUser, session: DbSession) -> JSONResponse:
    study = _ecg_study(session, user, study_uid)
    record = service.analysis_record(session, study)
    if record is None or record.status == AnalysisStatus.PENDING:
        return _json({"study_uid": study_uid, "status": "pending"}, status.HTTP_202_ACCEPTED)
    return _json({"study_uid": study_uid, **service.analysis_view(record)})


@router.put(
    "/ecg/{study_uid}/confirmed",
    summary="Store the reader's confirmed measurements and statements beside the machine's",
    responses={403: {"description": "Not a reader of the pool the study was routed to"}},
)
def confirm(
    study_uid: StudyUID, body: ConfirmedECG, user: CurrentUser, session: DbSession
) -> JSONResponse:
    study = _ecg_study(session, user, study_uid)
    item = session.scalar(select(WorklistItem).where(WorklistItem.study_pk == study.id))
    if not service.can_confirm(user, item):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            detail="only readers of the pool this ECG was routed to can confirm it",
        )
    # The draft pre-filled from the analysis follows the confirmation (see follow_ecg_confirmation).
    before = ecg_prefill(service.analysis_record(session, study))
    record = service.store_confirmed(session, study, user, body.model_dump(), utcnow())
    follow_ecg_confirmation(session, study.id, before, record)
    session.commit()
    return _json(
        {
            "study_uid": study_uid,
            "status": record.status.value,
            "confirmed": record.confirmed,
            "confirmed_at": record.confirmed_at,
        }
    )


@router.get(
    "/ecg/{study_uid}/render.{fmt}",
    summary="The 12-lead printout (3×4 + lead II rhythm strip, 25 mm/s, 10 mm/mV)",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}, "image/svg+xml": {}, "application/pdf": {}}},
        404: {"description": "No such ECG study, or not visible to this user"},
    },
)
def printout(
    study_uid: StudyUID,
    fmt: Annotated[Literal["png", "svg", "pdf"], Path(description="png, svg or pdf")],
    user: CurrentUser,
    session: DbSession,
    store: Store,
) -> Response:
    study = _ecg_study(session, user, study_uid)
    ecg = _load(session, store, study)
    measurements = service.header_measurements(service.analysis_record(session, study))
    content, media_type = render(ecg, fmt, measurements=measurements, title="12-lead ECG 心电图")
    return Response(
        content,
        media_type=media_type,
        headers={"Content-Disposition": f'inline; filename="{study_uid}.{fmt}"'},
    )


@router.get(
    "/ecg/{study_uid}/leads",
    summary="The leads in mV for the browser viewer, min/max-downsampled to max_points",
)
def leads(
    study_uid: StudyUID,
    user: CurrentUser,
    session: DbSession,
    store: Store,
    max_points: Annotated[int, Query(ge=2, le=200_000)] = 5000,
) -> JSONResponse:
    study = _ecg_study(session, user, study_uid)
    body = downsample_leads(_load(session, store, study), max_points)
    return JSONResponse({"study_uid": study_uid, **body})


@router.get(
    "/ecg/reacquire-requests",
    summary="'Technically unsatisfactory, re-acquire' notices for the studies visible to the user",
)
def reacquire_requests(
    user: CurrentUser,
    session: DbSession,
    include_resolved: Annotated[bool, Query()] = False,
) -> list[ReacquireNotice]:
    notices = service.reacquire_notices(session, user, open_only=not include_resolved)
    return [ReacquireNotice.model_validate(n) for n in notices]


def _load(session: DbSession, store: Store, study: Any) -> Any:
    try:
        return service.load_ecg(session, store, study)
    except ECGError as exc:
        raise HTTPException(
            422,  # the constant's name differs across Starlette versions
            detail=f"the stored waveform cannot be read: {exc}",
        ) from exc
