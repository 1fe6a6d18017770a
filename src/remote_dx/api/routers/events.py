"""Server-sent events: open worklists (and alert lists) update without reloading.

``GET /api/v1/worklist/events`` answers ``text/event-stream`` (HTML Living Standard §9.2):

- ``event: worklist`` — ``data: {"items": [WorklistChange…]}``: items in the user's scope that
  changed (claimed, released, drafted, signed, escalated, new) with their study UID, status,
  priority, pool and version; ``removed: true`` for items that left the scope (moved to another
  pool);
- ``event: alert`` — ``data: {"items": [AlertView…]}``: critical alerts in scope that are new,
  re-notified or just acknowledged;
- ``: heartbeat`` comments every 15 s, so proxies keep the connection open.

EventSource cannot set headers, so the bearer token may also come as ``?access_token=``.

How changes are found: every connection polls the database once a second — the ``(id,
version)`` pairs of the open (not signed) items in its scope, and the ``(id, notify_count)`` of
the unacknowledged alerts — and compares them with the previous poll. ``version`` is bumped by
every writer of a worklist item, so this works across any number of API and worker processes on
SQLite or PostgreSQL with no message bus. (A MAX(version) would not do: versions count per item,
so one item's change can leave the maximum unchanged.) Only open items are polled — the working
set of a pool — and a signed item drops out of the set, which reports its last change.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from fastapi.security import OAuth2PasswordBearer
from sqlalchemy import case, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, aliased, sessionmaker

from remote_dx.api.deps import TOKEN_URL, current_user
from remote_dx.core.models import (
    CriticalAlert,
    Institution,
    Role,
    Study,
    User,
    WorklistItem,
    WorklistStatus,
)
from remote_dx.worklist import alerts
from remote_dx.worklist.schemas import WorklistChange
from remote_dx.worklist.service import visibility

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1", tags=["worklist"])

POLL_SECONDS = 1.0
HEARTBEAT_SECONDS = 15.0

_bearer = OAuth2PasswordBearer(tokenUrl=TOKEN_URL, auto_error=False)
_pool = aliased(Institution, name="pool")
_holder = aliased(User, name="holder")


def stream_user(
    request: Request,
    header_token: Annotated[str | None, Depends(_bearer)],
    access_token: Annotated[
        str | None, Query(description="The bearer token, for EventSource (no headers)")
    ] = None,
) -> User:
    """The user of the header's or the query's token. Its own short session, not the request's:
    a request session would hold a pooled connection for as long as the stream stays open."""
    with request.app.state.sessions() as session:
        return current_user(request, session, header_token or access_token)


class WorklistWatch:
    """What one connection last saw; :meth:`poll` returns what changed since."""

    def __init__(self, sessions: sessionmaker[Session], user: User) -> None:
        self.sessions = sessions
        self.user = user
        self.items: dict[int, int] = {}
        self.alerts: dict[int, int] = {}

    def _open_items(self, session: Session) -> dict[int, int]:
        statement = select(WorklistItem.id, WorklistItem.version).where(
            visibility(self.user), WorklistItem.status != WorklistStatus.SIGNED
        )
        if Role(self.user.role) is Role.TECHNICIAN:  # scoped by the study's origin
            statement = statement.join(Study, Study.id == WorklistItem.study_pk)
        return {item_id: version for item_id, version in session.execute(statement)}

    def _open_alerts(self, session: Session) -> dict[int, int]:
        statement = (
            select(CriticalAlert.id, CriticalAlert.notify_count)
            .outerjoin(WorklistItem, WorklistItem.study_pk == CriticalAlert.study_pk)
            .where(alerts.alert_visibility(self.user), CriticalAlert.acknowledged_at.is_(None))
        )
        return {alert_id: count for alert_id, count in session.execute(statement)}

    def start(self) -> None:
        with self.sessions() as session:
            self.items = self._open_items(session)
            self.alerts = self._open_alerts(session)

    def poll(self) -> tuple[list[WorklistChange], list[dict[str, Any]]]:
        with self.sessions() as session:
            items = self._open_items(session)
            open_alerts = self._open_alerts(session)
            changed = {i for i, v in items.items() if self.items.get(i) != v}
            changed |= set(self.items) - set(items)
            alert_ids = {i for i, n in open_alerts.items() if self.alerts.get(i) != n}
            alert_ids |= set(self.alerts) - set(open_alerts)
            self.items, self.alerts = items, open_alerts
            changes = self._describe(session, changed) if changed else []
            alert_views = self._alert_views(session, alert_ids) if alert_ids else []
        return changes, alert_views

    def _describe(self, session: Session, ids: set[int]) -> list[WorklistChange]:
        rows = session.execute(
            select(
                Study.study_uid,
                WorklistItem.status,
                WorklistItem.priority,
                _pool.name,
                WorklistItem.version,
                _holder.full_name,
                WorklistItem.lease_expires_at,
                WorklistItem.escalation_level,
                case((visibility(self.user), True), else_=False),
            )
            .select_from(WorklistItem)
            .join(Study, Study.id == WorklistItem.study_pk)
            .join(_pool, _pool.id == WorklistItem.pool_id)
            .outerjoin(_holder, _holder.id == WorklistItem.claimed_by_id)
            .where(WorklistItem.id.in_(sorted(ids)))
            .order_by(WorklistItem.id)
        ).all()
        out: list[WorklistChange] = []
        for uid, status, priority, pool, version, holder, lease, level, visible in rows:
            if not visible:
                out.append(WorklistChange(study_uid=uid, removed=True))
                continue
            out.append(
                WorklistChange(
                    study_uid=uid,
                    status=status,
                    priority=priority,
                    pool=pool,
                    version=version,
                    claimed_by=holder,
                    lease_expires_at=lease,
                    escalation_level=level,
                )
            )
        return out

    def _alert_views(self, session: Session, ids: set[int]) -> list[dict[str, Any]]:
        page = alerts.list_alerts(session, self.user, limit=len(ids), alert_ids=sorted(ids))
        return [view.model_dump(mode="json") for view in page.items]


def _event(name: str, event_id: int, payload: dict[str, Any]) -> str:
    data = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return f"id: {event_id}\nevent: {name}\ndata: {data}\n\n"


@router.get(
    "/worklist/events",
    summary="Server-sent events: worklist items and critical alerts in scope that changed",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def worklist_events(
    request: Request, user: Annotated[User, Depends(stream_user)]
) -> StreamingResponse:
    watch = WorklistWatch(request.app.state.sessions, user)
    await run_in_threadpool(watch.start)

    async def stream() -> AsyncIterator[str]:
        counter = 0
        yield "retry: 3000\n: connected\n\n"
        last_sent = time.monotonic()
        while not await request.is_disconnected():
            await asyncio.sleep(POLL_SECONDS)
            try:
                changes, alert_views = await run_in_threadpool(watch.poll)
            except OperationalError as exc:  # database down: keep the stream, try again
                log.warning("worklist events: %s", exc)
                changes, alert_views = [], []
            if changes:
                counter += 1
                items = [c.model_dump(mode="json") for c in changes]
                yield _event("worklist", counter, {"items": items})
                last_sent = time.monotonic()
            if alert_views:
                counter += 1
                yield _event("alert", counter, {"items": alert_views})
                last_sent = time.monotonic()
            if time.monotonic() - last_sent >= HEARTBEAT_SECONDS:
                yield ": heartbeat\n\n"
                last_sent = time.monotonic()

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
