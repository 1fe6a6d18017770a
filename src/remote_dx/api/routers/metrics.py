"""``GET /metrics``: Prometheus text exposition of this process (or of all, in multi-process
mode) plus the database's queue depth and worklist gauges; see :mod:`remote_dx.ops.metrics`.

No login: like ``/healthz`` it is for the monitoring system, and it holds counts only — no
patient, user or study identifiers. Keep it off the public network at the proxy.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from remote_dx.ops.metrics import CONTENT_TYPE_LATEST, render

router = APIRouter(tags=["health"])


@router.get(
    "/metrics",
    summary="Prometheus metrics (text format 0.0.4)",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}},
)
async def metrics(request: Request) -> Response:
    body = await run_in_threadpool(render, request.app.state.sessions)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
