"""Liveness (``/healthz``: the process answers) and readiness (``/readyz``: its dependencies do)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, status
from fastapi.responses import JSONResponse

from remote_dx.api.readiness import probe

router = APIRouter(tags=["health"])

_READY_EXAMPLE = {
    "status": "ready",
    "checks": {"database": "ok", "storage": "ok", "broker": "ok"},
    "failing": [],
}
_UNAVAILABLE_EXAMPLE = {
    "status": "unavailable",
    "detail": "not ready: storage",
    "checks": {"database": "ok", "storage": "StorageUnavailable: …", "broker": "ok"},
    "failing": ["storage"],
}


@router.get("/healthz", summary="Liveness: the process is up")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: database, object store and broker reachable",
    responses={
        200: {"content": {"application/json": {"example": _READY_EXAMPLE}}},
        503: {
            "description": "A dependency is down; `failing` names it",
            "content": {"application/json": {"example": _UNAVAILABLE_EXAMPLE}},
        },
    },
)
def readyz(request: Request) -> JSONResponse:
    state = request.app.state
    result = probe(state.settings, state.sessions, state.store)
    body: dict[str, Any] = {"checks": result.checks, "failing": result.failing}
    if result.ready:
        return JSONResponse({"status": "ready", **body})
    return JSONResponse(
        {"status": "unavailable", "detail": "not ready: " + ", ".join(result.failing), **body},
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        headers={"Retry-After": "5"},
    )
