"""Audit every request generically (IHE ATNA, DICOM PS3.15 A.5), so new routers are covered.

:class:`AuditMiddleware` (pure ASGI) writes one :mod:`remote_dx.core.audit` record per request
when the response starts — before the first byte of patient data leaves — with:

- *who*: the user :func:`remote_dx.api.deps.current_user` noted on ``request.state`` (or the
  username a login tried), role and institution, and the client address;
- *what*: an action from the route — ``sign``/``amend``/``escalate``/… for the reading steps
  (:data:`ROUTE_ACTIONS`), else ``view`` (a JSON read), ``download`` (a file: PDF, image, DICOM,
  CSV), ``create``/``update``/``delete``/``execute`` by HTTP method — and the outcome
  (EventOutcomeIndicator from the status code);
- *on what*: the study of a ``{study_uid}``-style path parameter with its patient
  (``PatientID^^^Issuer``, HL7 CX), found in the index.

Routers add what only they know with :func:`note` (e.g. the login's username, an admin change's
target). If the audit record cannot be written, a successful answer is replaced by 503: patient
data is not disclosed unaudited.

Not audited: liveness/readiness, metrics, API docs and static files (no patient data).

A viewer reads a study as hundreds of requests (metadata, every frame, thumbnails). Successful
reads of one study by one user from one address within ``audit_coalesce_seconds`` are covered by
the first one's record, as ATNA's "DICOM Instances Accessed" event covers a study's instances in
one message; the record says so in its detail. So are the same user's repeats of the same
worklist or QIDO-RS search (same query string): a worklist page re-reads itself on every live
event. Refusals, writes and every different search are always recorded.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import anyio
from pydicom.uid import UID
from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session, sessionmaker
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from remote_dx.core import audit as chain
from remote_dx.core import db as core_db
from remote_dx.core.models import Institution, Patient, Role, Study, User

log = logging.getLogger(__name__)

SKIP_PATHS = frozenset(
    {
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
        "/docs",
        "/docs/oauth2-redirect",
        "/redoc",
        "/favicon.ico",
        "/api/v1/report-templates",
        "/api/v1/report-signing-key",
    }
)

# Reading and admin steps named by the last segments of their route (ATNA EventID terms of ours).
ROUTE_ACTIONS: dict[tuple[str, str], str] = {
    ("POST", "/report/sign"): "sign",
    ("POST", "/report/confirm"): "sign",
    ("POST", "/report/amend"): "amend",
    ("PUT", "/report/draft"): "draft",
    ("POST", "/consultations"): "escalate",
    ("POST", "/answer"): "consult-answer",
    ("POST", "/reassign"): "reassign",
    ("POST", "/claim"): "claim",
    ("POST", "/renew"): "claim",
    ("POST", "/release"): "release",
    ("POST", "/acknowledge"): "acknowledge",
    ("GET", "/report/fhir"): "export",
    ("PUT", "/routing/rules"): "admin",
    ("POST", "/deidentify"): "export",
    ("GET", "/deidentify"): "export",
}
STUDY_PARAMS = ("study_uid", "study", "study_instance_uid", "StudyInstanceUID")
_METHOD_ACTIONS = {"POST": "execute", "PUT": "update", "PATCH": "update", "DELETE": "delete"}
_FILE_TYPES = ("application/pdf", "application/dicom", "image/", "multipart/", "application/zip")


def note(request: Any, *, user: User | None = None, **fields: Any) -> None:
    """Add facts to the request's audit record (``action``, ``username``, ``patient``,
    ``object_type``, ``object_id``, ``detail``={…}); ``user`` names the acting user."""
    state = request.state
    if user is not None:
        state.audit_user = (user.id, user.username, Role(user.role).value, user.institution_id)
    current: dict[str, Any] = getattr(state, "audit", None) or {}
    detail = {**current.get("detail", {}), **fields.pop("detail", {})}
    current.update(fields)
    if detail:
        current["detail"] = detail
    state.audit = current


def _action(method: str, route_path: str, content_type: str, noted: str | None) -> str:
    if noted:
        return noted
    for (verb, suffix), action in ROUTE_ACTIONS.items():
        if verb == method and route_path.endswith(suffix):
            return action
    if method in ("GET", "HEAD"):
        if content_type.startswith("text/csv") or route_path.endswith("/export"):
            return "export"
        if content_type.startswith(_FILE_TYPES):
            return "download"
        return "view"
    return _METHOD_ACTIONS.get(method, method.lower())


def _study_uid(path_params: dict[str, Any]) -> str | None:
    for name in STUDY_PARAMS:
        value = path_params.get(name)
        if isinstance(value, str) and value:
            return value
    return None


class AuditMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware): streams such as server-sent events pass untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in SKIP_PATHS:
            await self.app(scope, receive, send)
            return
        started = False
        suppressed = False

        async def audited_send(message: Message) -> None:
            nonlocal started, suppressed
            if suppressed:
                return
            if message["type"] == "http.response.start" and not started:
                started = True
                headers = dict(message.get("headers") or [])
                content_type = headers.get(b"content-type", b"").decode("latin-1")
                status = int(message["status"])
                written = await self._write(scope, status, content_type)
                if not written and status < 400:
                    suppressed = True
                    await _send_unavailable(send)
                    return
            await send(message)

        try:
            await self.app(scope, receive, audited_send)
        except Exception:
            if not started:
                started = True
                await self._write(scope, 500, "")
            raise

    async def _write(self, scope: Scope, status: int, content_type: str) -> bool:
        route = scope.get("route")
        if route is None or isinstance(route, Mount):
            return True  # no route matched (plain 404) or a static file: nothing to audit
        if (scope.get("state") or {}).get("audit_written") == (status, content_type):
            return True  # the endpoint wrote this answer's record itself (write_for_answer)
        covered, key = _coalesced(scope, status, content_type)
        if covered:
            return True  # decided on the event loop: a covered read costs no thread hop
        # The lookups (institution, patient) in a thread; the wait for the commit on the loop.
        written = await anyio.to_thread.run_sync(_submit, scope, status, content_type, key)
        return await asyncio.wrap_future(written)


def write_for_answer(request: Any, status: int, content_type: str) -> Future[bool]:
    """Start writing the audit record of the answer an endpoint is about to give, from the
    endpoint's own worker thread: a future of whether it was written (False, logged, if it
    could not be; the endpoint then answers :func:`unavailable_response` instead of the data).

    The hot reads (worklist page, study) do their whole work in one thread-pool call; starting
    their record there spares the middleware's own hop to a thread for it, and the wait for the
    chain's commit happens on the event loop (:meth:`AuditedAnswer.when_written`), not in a
    thread the next request could use. The record is the one the middleware would write (same
    action, coalescing, fields), and the middleware skips it.
    """
    scope = request.scope
    covered, key = _coalesced(scope, status, content_type)
    if covered:
        written: Future[bool] = Future()
        written.set_result(True)
    else:
        written = _submit(scope, status, content_type, key)
    request.state.audit_written = (status, content_type)
    return written


def _coalesced(scope: Scope, status: int, content_type: str) -> tuple[bool, tuple[Any, ...] | None]:
    """(whether an earlier record covers this answer, the answer's coalescing key or None)."""
    key = _read_key(scope, status, content_type)
    return key is not None and _recent_reads(scope).covered(key), key


def _submit(
    scope: Scope, status: int, content_type: str, key: tuple[Any, ...] | None
) -> Future[bool]:
    """Start the answer's record: a future of True once it is committed (its coalescing ``key``
    then remembered), False (logged) when it cannot be written."""
    written: Future[bool] = Future()
    what = (scope["method"], scope["path"])

    def settle(record: Future[dict[str, Any]]) -> None:
        error = record.exception()
        if error is not None:
            log.error("audit record for %s %s could not be written", *what, exc_info=error)
            written.set_result(False)
            return
        if key is not None:
            _recent_reads(scope).remember(key)
        written.set_result(True)

    try:
        record = _write_record(scope, status, content_type, coalescing=key is not None)
    except Exception:
        log.exception("audit record for %s %s could not be written", *what)
        written.set_result(False)
    else:
        record.add_done_callback(settle)
    return written


JSON = "application/json"


@dataclass(frozen=True)
class AuditedAnswer:
    """A hot read's answer and whether its audit record was written (:func:`write_for_answer`):
    what the endpoint's thread hands back to the event loop."""

    response: Response
    written: Future[bool]

    async def when_written(self) -> Response:
        """The answer once its record is in the chain; the 503 if it could not be written."""
        if not self.written.done():  # a covered read's is done already: no round via the loop
            await asyncio.wrap_future(self.written)
        if self.written.result():
            return self.response
        return unavailable_response()


def audited_json(request: Any, model: Any) -> AuditedAnswer:
    """``model`` as a JSON answer (the bytes FastAPI's own serialisation of a response model
    gives), its audit record started."""
    return audited_json_bytes(request, model.__pydantic_serializer__.to_json(model))


def audited_json_bytes(request: Any, body: bytes) -> AuditedAnswer:
    """:func:`audited_json` of an answer already serialised (a kept worklist page)."""
    return AuditedAnswer(Response(body, media_type=JSON), write_for_answer(request, 200, JSON))


def unavailable_response() -> Response:
    """The 503 answered instead of data whose audit record could not be written."""
    return JSONResponse(
        {"detail": "the audit trail cannot be written right now; retry shortly"},
        status_code=503,
        headers={"Retry-After": "5"},
    )


class RecentReads:
    """Study reads already in the trail, per (user, address, study, action), for a window."""

    def __init__(self, window: float, capacity: int = 10_000) -> None:
        self.window = window
        self.capacity = capacity
        self._seen: OrderedDict[tuple[Any, ...], float] = OrderedDict()
        self._lock = threading.Lock()

    def covered(self, key: tuple[Any, ...]) -> bool:
        with self._lock:
            at = self._seen.get(key)
            return at is not None and time.monotonic() - at < self.window

    def remember(self, key: tuple[Any, ...]) -> None:
        with self._lock:
            self._seen[key] = time.monotonic()
            self._seen.move_to_end(key)
            while len(self._seen) > self.capacity:
                self._seen.popitem(last=False)


def _recent_reads(scope: Scope) -> RecentReads:
    state = scope["app"].state
    reads = getattr(state, "audit_recent_reads", None)
    if reads is None:
        reads = state.audit_recent_reads = RecentReads(state.settings.audit_coalesce_seconds)
    return reads


#: Searches a reader's screen repeats as they are: the worklist refreshing on its events, a
#: viewer's QIDO-RS re-asked. The same query string from the same user and address within the
#: window is covered by the first record (each different query still gets its own).
REPEATED_SEARCHES = frozenset(
    {"/api/v1/worklist", "/dicom-web/studies", "/dicom-web/series", "/dicom-web/instances"}
)


def _read_key(scope: Scope, status: int, content_type: str) -> tuple[Any, ...] | None:
    """The coalescing key of a successful read of one study, or of a repeated search
    (:data:`REPEATED_SEARCHES`), by a known user; else None."""
    if status >= 400 or scope["method"] not in ("GET", "HEAD"):
        return None
    if scope["app"].state.settings.audit_coalesce_seconds <= 0:
        return None
    state: dict[str, Any] = scope.get("state") or {}
    actor = state.get("audit_user")
    if actor is None or (state.get("audit") or {}).get("action"):
        return None  # anonymous, or a step a router named (export, …)
    route_path = getattr(scope["route"], "path", scope["path"])
    study_uid = _study_uid(scope.get("path_params") or {})
    if study_uid is None and route_path not in REPEATED_SEARCHES:
        return None
    action = _action(scope["method"], route_path, content_type, None)
    if action not in ("view", "download"):
        return None
    client = (scope.get("client") or (None,))[0]
    if study_uid is None:
        return (actor[0], client, route_path, scope.get("query_string", b""), action)
    return (actor[0], client, study_uid, action)


async def _send_unavailable(send: Send) -> None:
    body = json.dumps(
        {"detail": "the audit trail cannot be written right now; retry shortly"}
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", b"5"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def audit_sessions(url: str) -> sessionmaker[Session]:
    """Sessions on an engine of the audit trail's own: its writes neither wait for nor count
    against the requests' connection pool.

    Writes are short and serialised by the chain head anyway: a small pool keeps the audit
    engine from doubling each process's server connections, and more connections would only
    queue on the head's row lock while holding a backend. No pre-ping (a round trip per
    record): core.audit retries an append once on a connection found dead, e.g. after a
    PostgreSQL restart.
    """
    return core_db.own_sessionmaker(url, "audit", pool_size=2, max_overflow=2)


# Built once (cache keys too): the lookups of every audited request.
_INSTITUTION_CODE = select(Institution.code).where(Institution.id == bindparam("id"))
_STUDY_PATIENT = (
    select(Patient.patient_id, Patient.issuer)
    .join(Study, Study.patient_pk == Patient.id)
    .where(Study.study_uid == bindparam("study_uid"))
)


def _write_record(
    scope: Scope, status: int, content_type: str, *, coalescing: bool
) -> Future[dict[str, Any]]:
    app = scope["app"]
    sessions = audit_sessions(app.state.settings.resolved_database_url)
    state: dict[str, Any] = scope.get("state") or {}
    noted: dict[str, Any] = dict(state.get("audit") or {})
    route = scope["route"]
    route_path = getattr(route, "path", scope["path"])
    method = scope["method"]
    event = chain.AuditEvent(
        action=_action(method, route_path, content_type, noted.pop("action", None)),
        outcome=chain.outcome_of(status),
        client_address=(scope.get("client") or (None,))[0],
        method=method,
        path=scope["path"],
        status_code=status,
    )
    query = scope.get("query_string", b"").decode("latin-1")
    detail: dict[str, Any] = {"route": route_path}
    if query:
        detail["query"] = query[:1000]
    detail.update(noted.pop("detail", {}))
    if coalescing:
        window = app.state.settings.audit_coalesce_seconds
        detail["covers_reads_for_seconds"] = window
    event.detail = detail
    actor = state.get("audit_user")
    institution_id = None
    if actor is not None:
        event.user_id, event.username, event.role, institution_id = actor
    event.username = noted.pop("username", event.username)
    study_uid = _study_uid(scope.get("path_params") or {})
    if study_uid:
        event.object_type, event.object_id = "study", study_uid
    for name in ("patient", "object_type", "object_id"):
        if name in noted:
            setattr(event, name, noted.pop(name))
    known = state.get("audit_institution")
    if institution_id is not None and known is not None and known[0] == institution_id:
        # current_user read the code with the user row: no second lookup.
        event.institution, institution_id = known[1], None
    patient_unknown = (
        event.patient is None
        and event.object_type == "study"
        and event.object_id
        # An invalid UID (a %00 in the path, which PostgreSQL could not even compare) names no
        # study: no lookup, as in STOW-RS.
        and UID(event.object_id).is_valid
    )
    if institution_id is not None or patient_unknown:
        with sessions() as session:  # only when needed: even an unused session costs its close
            if institution_id is not None:
                event.institution = session.scalar(_INSTITUTION_CODE, {"id": institution_id})
            if patient_unknown:
                row = session.execute(_STUDY_PATIENT, {"study_uid": event.object_id}).first()
                if row is not None:
                    event.patient = patient_key(row[0], row[1])
    # Concurrent requests' records share one transaction (one head lock, one commit flush).
    return chain.submit(sessions, event)


def patient_key(patient_id: str, issuer: str | None) -> str:
    """A patient as an audit participant object: HL7 CX ``ID^^^Issuer`` (PS3.15 A.5.2.5)."""
    return f"{patient_id}^^^{issuer}" if issuer else patient_id
