"""ASGI middleware: request id, access log line and HTTP metrics for every request.

``X-Request-ID``: taken from the request when it looks like an id (a proxy's or the client's),
else made; bound to the log context for everything logged while the request is served and sent
back on the response, so a user's complaint, the proxy's log and ours can be joined.

Pure ASGI (not ``BaseHTTPMiddleware``): streaming responses (worklist events) pass through
untouched and the context variable is visible to the endpoint.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from remote_dx.ops import metrics
from remote_dx.ops.logging import new_request_id, request_id_var, study_uid_var, user_var

access_log = logging.getLogger("remote_dx.access")

HEADER = b"x-request-id"


def route_of(scope: Scope) -> str:
    """The matched route's template; ``unmatched`` for paths no route knows (bounded labels)."""
    route: Any = scope.get("route")
    path = getattr(route, "path", None) or getattr(route, "path_format", None)
    return str(path) if path else "unmatched"


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        supplied = None
        for name, value in scope.get("headers", ()):
            if name == HEADER:
                supplied = value.decode("latin-1")
                break
        request_id = new_request_id(supplied)
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500
        latency: float | None = None

        async def send_with_id(message: Message) -> None:
            nonlocal status, latency
            if message["type"] == "http.response.start":
                status = int(message["status"])
                latency = time.perf_counter() - started
                headers = [(k, v) for k, v in message.get("headers", ()) if k != HEADER]
                headers.append((HEADER, request_id.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = latency if latency is not None else time.perf_counter() - started
            route = route_of(scope)
            method = str(scope.get("method", "GET"))
            if route != "/metrics":
                metrics.observe_http(method, route, status, elapsed)
            study_uid = (scope.get("path_params") or {}).get("study_uid")
            study_token = study_uid_var.set(str(study_uid)) if study_uid else None
            # The authenticated user, as api.deps.current_user noted it for the audit trail.
            actor = (scope.get("state") or {}).get("audit_user")
            user = str(actor[1]) if isinstance(actor, tuple) and len(actor) > 1 else None
            user_token = user_var.set(user) if user else None
            # Errors and slow answers at INFO; the rest at DEBUG (uvicorn logs access lines too).
            access_log.log(
                logging.INFO if status >= 400 or elapsed > 1.0 else logging.DEBUG,
                "%s %s %d %.1f ms",
                method,
                scope.get("path", ""),
                status,
                elapsed * 1000,
                extra={"route": route, "status": status, "duration_ms": round(elapsed * 1000, 2)},
            )
            if study_token is not None:
                study_uid_var.reset(study_token)
            if user_token is not None:
                user_var.reset(user_token)
            request_id_var.reset(token)
