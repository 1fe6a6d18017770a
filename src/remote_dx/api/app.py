"""The FastAPI application factory.

``create_app(settings)`` wires one install's resources (DB sessions, object store, JWT secret)
into ``app.state``; every process kind (``serve``, ``api``) and every test builds its app here.
Errors always answer ``{"detail": "<message>"}``: 4xx for bad input, 503 when a dependency is
down (the client should retry), never a bare 500 for something the client did.
"""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version

import psycopg
from fastapi import FastAPI, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, OperationalError

from remote_dx.api.audit import AuditMiddleware
from remote_dx.api.deps import HOT_READS_AT_ONCE
from remote_dx.api.oidc import oidc_verifier
from remote_dx.api.routers import (
    admin,
    alerts,
    audit,
    auth,
    consultations,
    deidentify,
    dicomweb,
    ecg,
    events,
    health,
    metrics,
    recognition,
    report_exports,
    reports,
    routing,
    stats,
    studies,
    verify,
    worklist,
)
from remote_dx.api.security import load_jwt_secret
from remote_dx.api.viewer_static import mount_viewer
from remote_dx.core.db import get_hot_read_sessionmaker, get_sessionmaker
from remote_dx.core.errors import DatabaseUnavailable, ServiceError, StorageUnavailable
from remote_dx.core.settings import Settings, get_settings
from remote_dx.ops.http import RequestContextMiddleware
from remote_dx.storage.factory import get_store
from remote_dx.worklist.page_cache import KeptPages

log = logging.getLogger(__name__)

DESCRIPTION = """
远程影像与心电诊断中心 — remote imaging and ECG reading hub of a county medical community (医共体).

Township health centres push exams by DICOM C-STORE; once a study is complete it is processed and
routed to the pool of its county lead hospital, where readers find it on their worklist.

Authenticate with `POST /api/v1/auth/token` (OAuth2 password flow, form fields `username` and
`password`), then send `Authorization: Bearer <access_token>`. Times are UTC (ISO 8601, `Z`).
"""

OPENAPI_TAGS = [
    {"name": "auth", "description": "Log in and get a bearer token"},
    {"name": "admin", "description": "User management (administrators)"},
    {"name": "audit", "description": "Audit trail: search, CSV export, chain check (admins)"},
    {"name": "worklist", "description": "Studies waiting to be read, scoped to the user"},
    {"name": "studies", "description": "A study's patient, series, instances and routing"},
    {"name": "ecg", "description": "ECG upload, preliminary analysis, printout and leads"},
    {"name": "results", "description": "Signed results for the township: PDF, FHIR, deliveries"},
    {"name": "routing", "description": "Routing rules (administrators) and routing history"},
    {"name": "consultations", "description": "会诊: ask a higher-level pool, both opinions kept"},
    {"name": "alerts", "description": "Critical results (危急值): acknowledge by a named person"},
    {"name": "reports", "description": "Report templates, drafts, sign, confirm, amend"},
    {"name": "recognition", "description": "结果互认: a patient's recognisable signed results"},
    {"name": "stats", "description": "Statistics for the health commission: tables, CSV, XLSX"},
    {"name": "verify", "description": "Check a printed report by its code (no login)"},
    {"name": "dicomweb", "description": "DICOMweb (PS3.18): QIDO-RS, WADO-RS, WADO-URI, STOW-RS"},
    {"name": "health", "description": "Liveness and readiness probes"},
]


def _version() -> str:
    try:
        return version("remote-dx")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


def _location(loc: tuple[object, ...] | list[object]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("query", "path", "body", "header", "cookie"):
        where = {"query": "query parameter", "path": "path parameter", "body": "field"}
        prefix = where.get(parts[0], parts[0])
        return f"{prefix} '{'.'.join(parts[1:])}'" if len(parts) > 1 else prefix
    return ".".join(parts)


async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = jsonable_encoder(exc.errors(), exclude={"input", "ctx", "url"})
    message = "; ".join(f"{_location(e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in errors)
    return JSONResponse(
        {"detail": message or "invalid request", "errors": errors},
        status_code=422,  # the name of this constant differs across Starlette versions
    )


async def _unavailable(_request: Request, exc: Exception) -> JSONResponse:
    log.warning("dependency unavailable: %s", exc)
    what = "object store" if isinstance(exc, StorageUnavailable) else "database"
    return JSONResponse(
        {"detail": f"the {what} is unavailable right now; retry shortly"},
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        headers={"Retry-After": "5"},
    )


async def _refused(_request: Request, exc: ServiceError) -> JSONResponse:
    return JSONResponse(
        jsonable_encoder({"detail": exc.message, **exc.extra}), status_code=exc.status_code
    )


# psycopg refuses a text parameter holding U+0000 before sending it (PostgreSQL text cannot hold
# the character): only a client's value brings one (a %00 in a query), so the client's error.
_NUL_REFUSED = "cannot contain NUL (0x00)"
# SQLSTATE numeric_value_out_of_range: a number of the request beyond its column's type (an id
# of 2**31 in a path). SQLite compares any integer, so only PostgreSQL answered 500.
_OUT_OF_RANGE = "22003"


async def _data_refused(request: Request, exc: Exception) -> JSONResponse:
    """Values SQLite takes and PostgreSQL cannot: the client's error, not a 500."""
    cause = getattr(exc, "orig", exc)
    if _NUL_REFUSED in str(cause):
        detail = "a parameter holds the NUL character (U+0000), which no value here may"
    elif getattr(cause, "sqlstate", None) == _OUT_OF_RANGE:
        log.warning("out-of-range value on %s %s: %s", request.method, request.url.path, cause)
        detail = "a number in the request is beyond the range this field can hold"
    else:
        return await _internal_error(request, exc)
    return JSONResponse({"detail": detail}, status_code=422)


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    # A bug of ours, not the client's: logged with its traceback, answered in the usual shape.
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"detail": "internal error; it has been logged"}, status_code=500)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="remote_dx",
        summary="Remote imaging and ECG reading hub (基层检查、上级诊断、结果互认)",
        description=DESCRIPTION,
        version=_version(),
        openapi_tags=OPENAPI_TAGS,
    )
    app.state.settings = settings
    app.state.sessions = get_sessionmaker(settings)
    app.state.hot_read_sessions = get_hot_read_sessionmaker(
        settings, connections=sum(HOT_READS_AT_ONCE.values())
    )
    app.state.worklist_pages = KeptPages()  # readers' pages, kept per pool (worklist.page_cache)
    app.state.store = get_store(settings)
    app.state.jwt_secret = load_jwt_secret(settings)
    app.state.oidc = oidc_verifier(settings)  # None unless RDX_OIDC_ISSUER is set

    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    for error in (StorageUnavailable, DatabaseUnavailable, OperationalError):
        app.add_exception_handler(error, _unavailable)
    app.add_exception_handler(ServiceError, _refused)  # type: ignore[arg-type]
    for error in (DataError, psycopg.DataError):  # through SQLAlchemy, or psycopg's own cursor
        app.add_exception_handler(error, _data_refused)
    app.add_exception_handler(Exception, _internal_error)
    app.add_middleware(AuditMiddleware)  # every request with a route: an audit record
    app.add_middleware(RequestContextMiddleware)  # outermost: request id, metrics, access log

    # The hot reads first: a request is matched against the routers in order, and walking the
    # twelve before the study view cost ~50 µs of its CPU (FastAPI 0.165). No path of the
    # routers after them falls under theirs.
    app.include_router(events.router)  # before worklist: /worklist/events is a fixed path
    app.include_router(worklist.router)
    app.include_router(studies.router)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(auth.router)
    app.include_router(admin.router)
    app.include_router(audit.router)
    app.include_router(alerts.router)
    app.include_router(deidentify.router)  # /studies/{uid}/deidentified (issue 7)
    app.include_router(ecg.router)
    app.include_router(routing.router)
    app.include_router(consultations.router)
    app.include_router(report_exports.router)
    app.include_router(reports.router)
    app.include_router(recognition.router)
    app.include_router(verify.router)
    app.include_router(stats.router)
    app.include_router(dicomweb.router)
    mount_viewer(app)  # the browser viewer at / when viewer/dist is built; steps aside for routes
    return app
