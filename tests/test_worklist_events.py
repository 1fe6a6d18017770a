"""Server-sent events (issue 4, "server-sent events so open worklists update without reload"):
a real uvicorn server on a free port, EventSource-style streams read with httpx; another request
claims an item and the event arrives within seconds, scoped to the users who may see it.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from remote_dx.api.app import create_app
from remote_dx.api.routers import events
from remote_dx.api.routers.events import WorklistWatch
from remote_dx.core.db import get_sessionmaker
from remote_dx.core.models import Institution, Study, User, WorklistItem
from remote_dx.core.settings import Settings
from remote_dx.worklist import lease
from tests.support import demo_hub_on, free_port, wait_until
from tests.test_api_worklist import PROVINCE, Case, populate

EVENT_TIMEOUT = 8.0  # polls run every second; a few seconds of slack for a loaded machine


@pytest.fixture
def server(settings: Settings, db: sessionmaker[Session]) -> Iterator[str]:
    port = free_port()
    config = uvicorn.Config(
        create_app(settings),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        timeout_graceful_shutdown=2,
    )
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, name="uvicorn-test", daemon=True)
    thread.start()
    wait_until(lambda: uv.started, timeout=20, message="uvicorn to start")
    yield f"http://127.0.0.1:{port}"
    uv.should_exit = True
    thread.join(10)


def token(base: str, username: str) -> str:
    response = httpx.post(
        f"{base}/api/v1/auth/token", data={"username": username, "password": "demo"}
    )
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


class Listener:
    """Reads one event stream in a thread; parsed events land in ``events``."""

    def __init__(self, base: str, *, params: dict[str, str] | None = None, headers=None) -> None:
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.connected = threading.Event()
        self.status: int | None = None
        self._stop = threading.Event()
        self._client = httpx.Client(timeout=httpx.Timeout(30.0, read=30.0))
        self._args = (f"{base}/api/v1/worklist/events", params or {}, headers or {})
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        url, params, headers = self._args
        try:
            with self._client.stream("GET", url, params=params, headers=headers) as response:
                self.status = response.status_code
                self.content_type = response.headers.get("content-type", "")
                name, data = "message", []
                for line in response.iter_lines():
                    if self._stop.is_set():
                        return
                    if line.startswith(": connected"):
                        self.connected.set()
                    elif line.startswith(":"):
                        self.events.put(("comment", line[1:].strip()))
                    elif line.startswith("event:"):
                        name = line[6:].strip()
                    elif line.startswith("data:"):
                        data.append(line[5:].strip())
                    elif line == "" and data:
                        self.events.put((name, json.loads("\n".join(data))))
                        name, data = "message", []
        except httpx.HTTPError:
            pass
        finally:
            self.connected.set()

    def wait_for(self, predicate, timeout: float = EVENT_TIMEOUT) -> tuple[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no matching event within {timeout:.0f}s")
            try:
                event = self.events.get(timeout=remaining)
            except queue.Empty:
                continue
            if predicate(event):
                return event

    def drain(self) -> list[tuple[str, Any]]:
        out = []
        while not self.events.empty():
            out.append(self.events.get_nowait())
        return out

    def close(self) -> None:
        self._stop.set()
        self._client.close()


def worklist_item(uid: str, **expected):
    def match(event: tuple[str, Any]) -> bool:
        name, data = event
        return name == "worklist" and any(
            i["study_uid"] == uid and all(i.get(k) == v for k, v in expected.items())
            for i in data["items"]
        )

    return match


def test_a_claim_reaches_open_worklists_within_seconds(
    server: str, settings: Settings, db: sessionmaker[Session]
) -> None:
    cases: dict[str, Case] = populate(settings, db)
    tokens = {u: token(server, u) for u in ("county_reader", "tech_xiping", "province_reader")}
    county = Listener(server, headers={"Authorization": f"Bearer {tokens['county_reader']}"})
    township = Listener(server, params={"access_token": tokens["tech_xiping"]})  # EventSource
    province = Listener(server, params={"access_token": tokens["province_reader"]})
    listeners = (county, township, province)
    try:
        for listener in listeners:
            assert listener.connected.wait(10)
            assert listener.status == 200
            assert listener.content_type.startswith("text/event-stream")

        uid = cases["xp-chest"].study_uid
        claimed = httpx.post(
            f"{server}/api/v1/worklist/{uid}/claim",
            headers={"Authorization": f"Bearer {tokens['county_reader']}"},
        )
        assert claimed.status_code == 200, claimed.text
        version = claimed.json()["version"]

        _, data = county.wait_for(worklist_item(uid, status="claimed", version=version))
        [item] = [i for i in data["items"] if i["study_uid"] == uid]
        assert item["pool"] == "西峡县人民医院"
        assert item["priority"] == "routine"
        assert item["claimed_by"] == "县医院诊断医师"
        assert item["removed"] is False
        # The township that sent it follows it too.
        township.wait_for(worklist_item(uid, status="claimed"))

        released = httpx.post(
            f"{server}/api/v1/worklist/{uid}/release",
            headers={"Authorization": f"Bearer {tokens['county_reader']}"},
        )
        assert released.status_code == 200
        county.wait_for(worklist_item(uid, status="unread", claimed_by=None))

        # A reader raises a critical alert: the township's stream gets an alert event.
        raised = httpx.post(
            f"{server}/api/v1/studies/{uid}/alerts",
            headers={"Authorization": f"Bearer {tokens['county_reader']}"},
            json={"reasons": [{"text": "右侧张力性气胸"}]},
        )
        assert raised.status_code == 201
        _, alert = township.wait_for(lambda e: e[0] == "alert")
        assert [a["id"] for a in alert["items"]] == [raised.json()["id"]]

        # Nothing of the county pool reached the provincial reader.
        assert [e for e in province.drain() if e[0] in ("worklist", "alert")] == []
    finally:
        for listener in listeners:
            listener.close()


def test_heartbeat_comments_keep_a_quiet_stream_open(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events, "HEARTBEAT_SECONDS", 0.5)
    listener = Listener(server, params={"access_token": token(server, "county_reader")})
    try:
        assert listener.wait_for(lambda e: e == ("comment", "heartbeat"), timeout=10)
    finally:
        listener.close()


def test_the_stream_needs_a_valid_token(server: str) -> None:
    assert httpx.get(f"{server}/api/v1/worklist/events").status_code == 401
    bad = httpx.get(f"{server}/api/v1/worklist/events", params={"access_token": "x.y.z"})
    assert bad.status_code == 401


def watch_changes(settings: Settings, sessions: sessionmaker[Session]) -> None:
    """The change detection behind the stream, on one database: a claim, a move to another pool
    (the county sees it leave), a signature (it leaves the open set, its last state is told)."""
    cases = populate(settings, sessions)
    with sessions() as session:
        users = {u.username: u for u in session.scalars(select(User))}
    county = WorklistWatch(sessions, users["county_reader"])
    province = WorklistWatch(sessions, users["province_reader"])
    county.start()
    province.start()
    assert county.poll() == ([], []) and province.poll() == ([], [])

    uid = cases["xp-chest"].study_uid
    with sessions() as session:
        view = lease.claim(session, users["county_reader"], uid, lease=timedelta(minutes=15))
    [change], _ = county.poll()
    assert (change.study_uid, change.status, change.version) == (uid, "claimed", view.version)
    assert change.claimed_by == "县医院诊断医师"
    assert province.poll() == ([], [])

    with sessions() as session, session.begin():
        item = session.scalar(select(WorklistItem).join(Study).where(Study.study_uid == uid))
        item.pool_id = session.scalar(select(Institution.id).where(Institution.code == PROVINCE))
        item.version += 1
    [gone], _ = county.poll()
    assert (gone.study_uid, gone.removed, gone.status) == (uid, True, None)
    [arrived], _ = province.poll()
    assert (arrived.study_uid, arrived.pool, arrived.removed) == (uid, "河南省人民医院", False)

    with sessions() as session, session.begin():
        study_pk = session.scalar(select(Study.id).where(Study.study_uid == uid))
        lease.mark_signed(session, study_pk, by_user_id=users["province_reader"].id, final=True)
    [signed], _ = province.poll()
    assert (signed.study_uid, signed.status) == (uid, "signed")
    assert province.poll() == ([], [])


def test_change_detection_on_sqlite(settings: Settings, db: sessionmaker[Session]) -> None:
    watch_changes(settings, db)


@pytest.mark.postgres
def test_change_detection_on_postgresql(settings: Settings, postgres_database: str) -> None:
    pg = demo_hub_on(settings, postgres_database)
    watch_changes(pg, get_sessionmaker(pg))
