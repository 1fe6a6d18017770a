"""DICOMweb under ``/dicom-web`` (PS3.18): QIDO-RS, WADO-RS, WADO-URI and STOW-RS.

Bearer authentication as the rest of the API; every resource is scoped like the worklist (see
:mod:`remote_dx.dicomweb.access`). The logic lives in :mod:`remote_dx.dicomweb`; this module maps
HTTP onto it. docs/dicomweb.md lists the conformance (what OHIF's DICOMweb data source and
``dicomweb-client`` rely on).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, BinaryIO

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from remote_dx.api.deps import PATIENT_DATA, CurrentUser, DbSession, Store
from remote_dx.core.models import User
from remote_dx.dicomweb import qido, service, stow, wado
from remote_dx.dicomweb.multipart import (
    BadRequest,
    NotAcceptable,
    UnsupportedMediaType,
    multipart_body,
    new_boundary,
    parse_accept,
    parse_media_type,
    split_spooled,
)
from remote_dx.storage.base import ObjectStore

SPOOL_IN_MEMORY = 8 * 1024 * 1024

router = APIRouter(prefix="/dicom-web", tags=["dicomweb"], dependencies=[PATIENT_DATA])

DICOM_JSON = "application/dicom+json"
Accept = Annotated[str | None, Header()]

_NOT_FOUND = {404: {"description": "Unknown, or not visible to this user (the same answer)"}}
_NOT_ACCEPTABLE = {406: {"description": "No representation the Accept header allows"}}


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/") + router.prefix


def _json_accepted(accept: str | None) -> None:
    for media in parse_accept(accept):
        if any(media.matches(t) for t in (DICOM_JSON, "application/json")):
            return
    raise NotAcceptable(f"this resource is available as {DICOM_JSON}")


def _search(
    request: Request,
    session: DbSession,
    user: CurrentUser,
    accept: str | None,
    level: qido.Level,
    study_uid: str | None = None,
    series_uid: str | None = None,
) -> Response:
    _json_accepted(accept)
    query = qido.parse_query(request.query_params.multi_items(), level, study_uid, series_uid)
    result = qido.search(session, user, query, _base(request))
    if result.parent_missing:
        from remote_dx.core.errors import NotFound

        raise NotFound(
            f"{'series ' + series_uid if series_uid else 'study ' + str(study_uid)} not found"
        )

    headers = {"Warning": ", ".join(result.warnings)} if result.warnings else None
    body = json.dumps(result.datasets, ensure_ascii=False, separators=(",", ":"))
    return Response(body.encode(), media_type=DICOM_JSON, headers=headers)


# -- QIDO-RS (PS3.18 §10.6) --------------------------------------------------------------------


@router.get("/studies", summary="QIDO-RS: search for studies", responses=_NOT_ACCEPTABLE)
def search_studies(
    request: Request, session: DbSession, user: CurrentUser, accept: Accept = None
) -> Response:
    return _search(request, session, user, accept, qido.Level.STUDY)


@router.get("/series", summary="QIDO-RS: search for series", responses=_NOT_ACCEPTABLE)
def search_all_series(
    request: Request, session: DbSession, user: CurrentUser, accept: Accept = None
) -> Response:
    return _search(request, session, user, accept, qido.Level.SERIES)


@router.get("/instances", summary="QIDO-RS: search for instances", responses=_NOT_ACCEPTABLE)
def search_all_instances(
    request: Request, session: DbSession, user: CurrentUser, accept: Accept = None
) -> Response:
    return _search(request, session, user, accept, qido.Level.INSTANCE)


@router.get(
    "/studies/{study_uid}/series",
    summary="QIDO-RS: search for a study's series",
    responses={**_NOT_FOUND, **_NOT_ACCEPTABLE},
)
def search_series(
    study_uid: str, request: Request, session: DbSession, user: CurrentUser, accept: Accept = None
) -> Response:
    return _search(request, session, user, accept, qido.Level.SERIES, study_uid)


@router.get(
    "/studies/{study_uid}/instances",
    summary="QIDO-RS: search for a study's instances",
    responses={**_NOT_FOUND, **_NOT_ACCEPTABLE},
)
def search_study_instances(
    study_uid: str, request: Request, session: DbSession, user: CurrentUser, accept: Accept = None
) -> Response:
    return _search(request, session, user, accept, qido.Level.INSTANCE, study_uid)


@router.get(
    "/studies/{study_uid}/series/{series_uid}/instances",
    summary="QIDO-RS: search for a series' instances",
    responses={**_NOT_FOUND, **_NOT_ACCEPTABLE},
)
def search_instances(
    study_uid: str,
    series_uid: str,
    request: Request,
    session: DbSession,
    user: CurrentUser,
    accept: Accept = None,
) -> Response:
    return _search(request, session, user, accept, qido.Level.INSTANCE, study_uid, series_uid)


# -- WADO-RS metadata (PS3.18 §10.4.1.1.2) -----------------------------------------------------


def _metadata(
    session: DbSession,
    store: Store,
    user: CurrentUser,
    accept: str | None,
    accept_encoding: str | None,
    study_uid: str,
    series_uid: str | None = None,
    sop_uid: str | None = None,
) -> Response:
    _json_accepted(accept)
    body, gzipped = service.metadata_blob(session, store, user, study_uid, series_uid, sop_uid)
    headers = {"Vary": "Accept-Encoding"}
    if gzipped:
        if "gzip" in (accept_encoding or "").lower():
            headers["Content-Encoding"] = "gzip"
        else:
            body = service.gunzip(body)
    return Response(body, media_type=DICOM_JSON, headers=headers)


@router.get(
    "/studies/{study_uid}/metadata",
    summary="WADO-RS: a study's metadata (DICOM JSON)",
    responses={**_NOT_FOUND, **_NOT_ACCEPTABLE},
)
def study_metadata(
    study_uid: str,
    session: DbSession,
    store: Store,
    user: CurrentUser,
    accept: Accept = None,
    accept_encoding: Annotated[str | None, Header()] = None,
) -> Response:
    return _metadata(session, store, user, accept, accept_encoding, study_uid)


@router.get(
    "/studies/{study_uid}/series/{series_uid}/metadata",
    summary="WADO-RS: a series' metadata (DICOM JSON, precomputed, gzip)",
    responses={**_NOT_FOUND, **_NOT_ACCEPTABLE},
)
def series_metadata(
    study_uid: str,
    series_uid: str,
    session: DbSession,
    store: Store,
    user: CurrentUser,
    accept: Accept = None,
    accept_encoding: Annotated[str | None, Header()] = None,
) -> Response:
    return _metadata(session, store, user, accept, accept_encoding, study_uid, series_uid)


@router.get(
    "/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}/metadata",
    summary="WADO-RS: an instance's metadata (DICOM JSON)",
    responses={**_NOT_FOUND, **_NOT_ACCEPTABLE},
)
def instance_metadata(
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    session: DbSession,
    store: Store,
    user: CurrentUser,
    accept: Accept = None,
    accept_encoding: Annotated[str | None, Header()] = None,
) -> Response:
    return _metadata(session, store, user, accept, accept_encoding, study_uid, series_uid, sop_uid)


# -- WADO-RS frames, bulk data (PS3.18 §10.4.1.1.4, §10.4.1.1.5) ---------------------------------


def _multipart(parts: list[tuple[bytes, dict[str, str]]], part_type: str) -> Response:
    boundary = new_boundary()
    body = b"".join(multipart_body(parts, boundary))
    return Response(
        body,
        media_type=f'multipart/related; type="{part_type}"; boundary={boundary}',
    )


@router.get(
    "/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}/frames/{frame_list}",
    summary="WADO-RS: frames (stored transfer syntax, or decoded to Explicit VR Little Endian)",
    responses={**_NOT_FOUND, **_NOT_ACCEPTABLE, 400: {"description": "Bad frame list"}},
)
def retrieve_frames(
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    frame_list: str,
    session: DbSession,
    store: Store,
    user: CurrentUser,
    accept: Accept = None,
) -> Response:
    numbers = wado.parse_frame_list(frame_list)
    (ref,) = service.refs_for(session, user, study_uid, series_uid, sop_uid)
    plan = wado.frame_plan(accept, ref.transfer_syntax_uid)
    data = wado.stored_frames(store, ref, numbers, plan)
    part_type = f"{plan.media_type}; transfer-syntax={plan.transfer_syntax}"
    return _multipart([(frame, {"Content-Type": part_type}) for frame in data], plan.media_type)


@router.get(
    "/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}/bulkdata/{path:path}",
    summary="WADO-RS: one bulk data value named in the metadata's BulkDataURI",
    responses={**_NOT_FOUND, **_NOT_ACCEPTABLE},
)
def retrieve_bulkdata(
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    path: str,
    session: DbSession,
    store: Store,
    user: CurrentUser,
    accept: Accept = None,
) -> Response:
    if not any(
        m.type in ("*/*", "multipart/*", wado.OCTET)
        or (m.is_multipart and m.part_type in (None, wado.OCTET, "*/*"))
        for m in parse_accept(accept)
    ):
        raise NotAcceptable(
            'bulk data is available as multipart/related; type="application/octet-stream"'
        )
    (ref,) = service.refs_for(session, user, study_uid, series_uid, sop_uid)
    value = wado.bulk_value(wado.load(store, ref), path)
    return _multipart([(value, {"Content-Type": wado.OCTET})], wado.OCTET)


# -- WADO-RS rendered and thumbnail (PS3.18 §10.4.1.1.3, §10.4.1.1.6) ----------------------------


def _rendered(
    session: DbSession,
    store: Store,
    user: CurrentUser,
    accept: str | None,
    study_uid: str,
    series_uid: str | None,
    sop_uid: str | None,
    frame: int,
    window: str | None,
    viewport: str | None,
    quality: str | None,
    thumbnail: bool = False,
) -> Response:
    options = wado.render_options(
        accept, window, viewport, quality, default_viewport=(128, 128) if thumbnail else None
    )
    refs = service.refs_for(session, user, study_uid, series_uid, sop_uid)
    ref = refs[0] if sop_uid else wado.representative(refs)
    body = wado.render(wado.load(store, ref), frame, options)
    return Response(body, media_type=options.media_type)


Window = Annotated[str | None, Query(description="center,width[,linear|linear-exact|sigmoid]")]
Viewport = Annotated[str | None, Query(description="width,height of the answer in pixels")]
Quality = Annotated[str | None, Query(description="JPEG quality 1…100")]


@router.get(
    "/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}/rendered",
    summary="WADO-RS: an instance rendered (JPEG/PNG; first frame)",
    responses={**_NOT_FOUND, **_NOT_ACCEPTABLE},
)
def instance_rendered(
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    session: DbSession,
    store: Store,
    user: CurrentUser,
    accept: Accept = None,
    window: Window = None,
    viewport: Viewport = None,
    quality: Quality = None,
) -> Response:
    return _rendered(
        session, store, user, accept, study_uid, series_uid, sop_uid, 1, window, viewport, quality
    )


@router.get(
    "/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}/frames/{frame}/rendered",
    summary="WADO-RS: one frame rendered (JPEG/PNG)",
    responses={**_NOT_FOUND, **_NOT_ACCEPTABLE},
)
def frame_rendered(
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    frame: str,
    session: DbSession,
    store: Store,
    user: CurrentUser,
    accept: Accept = None,
    window: Window = None,
    viewport: Viewport = None,
    quality: Quality = None,
) -> Response:
    numbers = wado.parse_frame_list(frame)
    if len(numbers) != 1:
        raise BadRequest("a rendered frame is one frame number")
    return _rendered(
        session,
        store,
        user,
        accept,
        study_uid,
        series_uid,
        sop_uid,
        numbers[0],
        window,
        viewport,
        quality,
    )


@router.get(
    "/studies/{study_uid}/thumbnail",
    summary="WADO-RS: a study's thumbnail",
    responses={**_NOT_FOUND, **_NOT_ACCEPTABLE},
)
def study_thumbnail(
    study_uid: str,
    session: DbSession,
    store: Store,
    user: CurrentUser,
    accept: Accept = None,
    viewport: Viewport = None,
) -> Response:
    return _rendered(
        session, store, user, accept, study_uid, None, None, 1, None, viewport, None, True
    )


@router.get(
    "/studies/{study_uid}/series/{series_uid}/thumbnail",
    summary="WADO-RS: a series' thumbnail",
    responses={**_NOT_FOUND, **_NOT_ACCEPTABLE},
)
def series_thumbnail(
    study_uid: str,
    series_uid: str,
    session: DbSession,
    store: Store,
    user: CurrentUser,
    accept: Accept = None,
    viewport: Viewport = None,
) -> Response:
    return _rendered(
        session, store, user, accept, study_uid, series_uid, None, 1, None, viewport, None, True
    )


@router.get(
    "/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}/thumbnail",
    summary="WADO-RS: an instance's thumbnail",
    responses={**_NOT_FOUND, **_NOT_ACCEPTABLE},
)
def instance_thumbnail(
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    session: DbSession,
    store: Store,
    user: CurrentUser,
    accept: Accept = None,
    viewport: Viewport = None,
) -> Response:
    return _rendered(
        session, store, user, accept, study_uid, series_uid, sop_uid, 1, None, viewport, None, True
    )


# -- WADO-RS instances (PS3.18 §10.4.1.1.1) -----------------------------------------------------


def _retrieve(
    session: DbSession,
    store: Store,
    user: CurrentUser,
    accept: str | None,
    study_uid: str,
    series_uid: str | None = None,
    sop_uid: str | None = None,
) -> Response:
    refs = service.refs_for(session, user, study_uid, series_uid, sop_uid)
    # One plan for all: the Accept header is checked against the first instance's syntax.
    plans = {
        ref.transfer_syntax_uid: wado.instance_plan(accept, ref.transfer_syntax_uid) for ref in refs
    }
    boundary = new_boundary()

    def parts() -> Iterator[tuple[bytes, dict[str, str]]]:
        for ref in refs:
            plan = plans[ref.transfer_syntax_uid]
            yield from wado.iter_instances(store, [ref], plan)

    return StreamingResponse(
        multipart_body(parts(), boundary),
        media_type=f'multipart/related; type="{wado.DICOM}"; boundary={boundary}',
    )


@router.get(
    "/studies/{study_uid}",
    summary="WADO-RS: a study's instances (multipart/related; application/dicom)",
    responses={**_NOT_FOUND, **_NOT_ACCEPTABLE},
)
def retrieve_study(
    study_uid: str, session: DbSession, store: Store, user: CurrentUser, accept: Accept = None
) -> Response:
    return _retrieve(session, store, user, accept, study_uid)


@router.get(
    "/studies/{study_uid}/series/{series_uid}",
    summary="WADO-RS: a series' instances",
    responses={**_NOT_FOUND, **_NOT_ACCEPTABLE},
)
def retrieve_series(
    study_uid: str,
    series_uid: str,
    session: DbSession,
    store: Store,
    user: CurrentUser,
    accept: Accept = None,
) -> Response:
    return _retrieve(session, store, user, accept, study_uid, series_uid)


@router.get(
    "/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}",
    summary="WADO-RS: one instance",
    responses={**_NOT_FOUND, **_NOT_ACCEPTABLE},
)
def retrieve_instance(
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    session: DbSession,
    store: Store,
    user: CurrentUser,
    accept: Accept = None,
) -> Response:
    return _retrieve(session, store, user, accept, study_uid, series_uid, sop_uid)


# -- STOW-RS (PS3.18 §10.5) -----------------------------------------------------------------------


async def _spool(request: Request) -> tuple[BinaryIO, bool]:
    """The request body in a temporary file (memory up to :data:`SPOOL_IN_MEMORY`, then disk
    under the data directory): (file, whether the client went away before the end)."""
    directory = Path(request.app.state.settings.data_dir) / "tmp"
    directory.mkdir(parents=True, exist_ok=True)
    # Closed by the caller once the parts are filed.
    file = tempfile.SpooledTemporaryFile(  # noqa: SIM115
        max_size=SPOOL_IN_MEMORY, dir=directory, prefix="stow-"
    )
    disconnected = False
    try:
        async for chunk in request.stream():
            if chunk:
                file.write(chunk)  # into the page cache: short enough for the event loop
    except ClientDisconnect:
        disconnected = True
    except BaseException:
        file.close()
        raise
    return file, disconnected  # type: ignore[return-value]


async def _stow(
    request: Request, user: User, store: ObjectStore, accept: str | None, study_uid: str | None
) -> Response:
    _json_accepted(accept)
    content_type = request.headers.get("content-type")
    media = parse_media_type(content_type or "")
    if media.type != "multipart/related":
        raise UnsupportedMediaType(
            f'Content-Type must be multipart/related; type="{wado.DICOM}", not '
            f"{content_type or 'absent'}"
        )
    if media.part_type not in (None, wado.DICOM):
        raise UnsupportedMediaType(
            f'only type="{wado.DICOM}" is stored (PS3.10 files), not {media.part_type}'
        )
    # Spooled, not held in memory: a study of hundreds of images is one request. Parts are read
    # one at a time as they are filed.
    file, disconnected = await _spool(request)
    try:
        body = await run_in_threadpool(split_spooled, file, content_type)
        stow.check_parts(body.parts)
        result = await run_in_threadpool(
            stow.store_instances,
            body.parts,
            user=user,
            sessions=request.app.state.sessions,
            store=store,
            base=_base(request),
            study_uid=study_uid,
        )
    finally:
        file.close()
    headers = {"Retry-After": "5"} if result.status_code == 503 else {}
    status_code = result.status_code
    if body.error is not None:
        # The whole parts before the fault are stored and listed in the body; the request as a
        # whole was malformed (PS3.18 §10.5.3: 400), and the Warning header says where.
        status_code = 400
        stored = len(result.stored)
        reason = "the client disconnected; " if disconnected else ""
        headers["Warning"] = (
            f'299 remote_dx "{reason}{body.error}; {stored} instance(s) before it were stored"'
        )
    payload = json.dumps(result.body, separators=(",", ":")).encode()
    return Response(payload, status_code=status_code, media_type=DICOM_JSON, headers=headers)


_STOW_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {"description": "Some instances stored, some failed (see Failed SOP Sequence)"},
    400: {
        "description": "Malformed multipart body; whole parts before the fault are stored and "
        "listed (Warning header)"
    },
    409: {"description": "No instance stored (see Failed SOP Sequence)"},
    415: {"description": 'Not multipart/related; type="application/dicom"'},
    503: {"description": "Storage or database unavailable; retry"},
    **_NOT_ACCEPTABLE,
}


@router.post("/studies", summary="STOW-RS: store instances", responses=_STOW_RESPONSES)
async def store_instances(
    request: Request, user: CurrentUser, store: Store, accept: Accept = None
) -> Response:
    return await _stow(request, user, store, accept, None)


@router.post(
    "/studies/{study_uid}",
    summary="STOW-RS: store instances of one study",
    responses=_STOW_RESPONSES,
)
async def store_study_instances(
    study_uid: str, request: Request, user: CurrentUser, store: Store, accept: Accept = None
) -> Response:
    return await _stow(request, user, store, accept, study_uid)


# -- WADO-URI (PS3.18 §9) -----------------------------------------------------------------------


@router.get(
    "/wado",
    summary="WADO-URI: one object as DICOM, JPEG or PNG",
    responses={**_NOT_FOUND, **_NOT_ACCEPTABLE, 400: {"description": "Missing parameters"}},
)
def wado_uri(
    session: DbSession,
    store: Store,
    user: CurrentUser,
    request_type: Annotated[str | None, Query(alias="requestType")] = None,
    study_uid: Annotated[str | None, Query(alias="studyUID")] = None,
    series_uid: Annotated[str | None, Query(alias="seriesUID")] = None,
    object_uid: Annotated[str | None, Query(alias="objectUID")] = None,
    content_type: Annotated[str | None, Query(alias="contentType")] = None,
    transfer_syntax: Annotated[str | None, Query(alias="transferSyntax")] = None,
    frame_number: Annotated[str | None, Query(alias="frameNumber")] = None,
    window_center: Annotated[str | None, Query(alias="windowCenter")] = None,
    window_width: Annotated[str | None, Query(alias="windowWidth")] = None,
    rows: Annotated[str | None, Query()] = None,
    columns: Annotated[str | None, Query()] = None,
    image_quality: Annotated[str | None, Query(alias="imageQuality")] = None,
    accept: Accept = None,
) -> Response:
    if request_type != "WADO":
        raise BadRequest("requestType=WADO is required (PS3.18 §9.1.2.1.1)")
    if not (study_uid and series_uid and object_uid):
        raise BadRequest("studyUID, seriesUID and objectUID are all required")
    (ref,) = service.refs_for(session, user, study_uid, series_uid, object_uid)
    wanted = content_type or accept or "image/jpeg"
    if any(m.type == wado.DICOM for m in parse_accept(wanted)):
        syntax = transfer_syntax or "*"
        as_accept = f'multipart/related; type="{wado.DICOM}"; transfer-syntax={syntax}'
        plan = wado.instance_plan(as_accept, ref.transfer_syntax_uid)
        return Response(wado.instance_bytes(store, ref, plan), media_type=wado.DICOM)
    window = None
    if window_center is not None or window_width is not None:
        window = f"{window_center or ''},{window_width or ''}"
    viewport = None
    if rows or columns:
        viewport = f"{columns or rows},{rows or columns}"
    options = wado.render_options(wanted, window, viewport, image_quality)
    frame = wado.parse_frame_list(frame_number)[0] if frame_number else 1
    body = wado.render(wado.load(store, ref), frame, options)
    return Response(body, media_type=options.media_type)
