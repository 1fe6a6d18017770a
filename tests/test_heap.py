"""Server processes freeze their start-up heap (core/heap.py); in-process users never do."""

from __future__ import annotations

import gc
import socket
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from celery.apps.worker import Worker as CeleryWorker

from remote_dx import tasks
from remote_dx.core.heap import freeze_startup_heap
from remote_dx.ingest import dicom_scp


@pytest.fixture
def thawed() -> Iterator[None]:
    """Start and end with nothing frozen, so the test process's garbage stays collectable."""
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_freeze_moves_the_live_heap_out_of_collections(thawed: None) -> None:
    assert gc.get_freeze_count() == 0
    frozen = freeze_startup_heap()
    # Other threads of this test process (a writer ending its idle wait, a pool's thread) may
    # free frozen objects between the two counts (101 of 1,085,266 once in CI); nothing else
    # freezes any.
    assert 0 < gc.get_freeze_count() <= frozen
    assert frozen > 10_000  # pytest, SQLAlchemy, pydicom … are all alive in this process


def test_a_receiver_process_freezes_before_it_reports_ready(
    thawed: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    frozen_at_ready: list[int] = []
    receiver = SimpleNamespace(
        server=SimpleNamespace(ready=lambda: frozen_at_ready.append(gc.get_freeze_count()))
    )
    monkeypatch.setattr(dicom_scp, "start_receiver", lambda *_a, **_k: receiver)
    monkeypatch.setattr(dicom_scp, "_serve_until_stopped", lambda _receiver: None)
    monkeypatch.setattr(dicom_scp, "_configure_logging", lambda _settings: None)
    monkeypatch.setattr(dicom_scp.signal, "signal", lambda *_a: None)
    ours, theirs = socket.socketpair()
    try:
        dicom_scp._receiver_process(dicom_scp.Settings(), theirs)
    finally:
        ours.close()
        theirs.close()
    assert len(frozen_at_ready) == 1
    assert frozen_at_ready[0] > 0


@pytest.mark.parametrize(
    ("sender", "frozen"),
    [
        # `remote-dx worker` / `celery worker`: a process of its own, frozen before it forks.
        (CeleryWorker.__new__(CeleryWorker), True),
        # The embedded WorkController fires the same signal inside `serve` and inside tests.
        (object(), False),
    ],
    ids=["worker-process", "embedded"],
)
def test_only_a_worker_process_of_its_own_freezes_at_worker_init(
    thawed: None, monkeypatch: pytest.MonkeyPatch, sender: Any, frozen: bool
) -> None:
    preloaded: list[bool] = []
    monkeypatch.setattr(tasks, "_ensure_broker_folders", lambda _settings: None)
    monkeypatch.setattr(tasks, "preload_analysis", lambda: preloaded.append(True))
    tasks._on_worker_init(sender=sender)
    assert (gc.get_freeze_count() > 0) is frozen
    # The embedded worker imports the analysis in its own thread, not in the one building it.
    assert bool(preloaded) is frozen
