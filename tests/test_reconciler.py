"""The database is the source of truth for work: lost messages and killed workers only delay.

- a QUEUED study whose broker message vanished is re-issued after ``reconcile_after_seconds``
  (the clock is moved, not waited for) and processed;
- a worker killed with SIGKILL in the middle of the task (made slow by a hook in the worker's own
  process) loses nothing: on the filesystem broker the reconciler re-issues the study, on Redis the
  unacknowledged message comes back after the visibility timeout (``acks_late``); either way the
  study ends PROCESSED exactly once (one worklist item);
- a study that keeps failing or crashing is FAILED after ``max_task_attempts``, while transient
  outages (storage down) never use up attempts.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from remote_dx import pipeline, tasks
from remote_dx.core import clock
from remote_dx.core.errors import StorageUnavailable
from remote_dx.core.models import Study, StudyStatus, TaskRun, WorklistItem
from remote_dx.core.settings import Settings
from remote_dx.ingest.study import reconcile_stale_studies, start_run, sweep_ready_studies
from tests.support import wait_until
from tests.test_pipeline import file, make_dx, part10, quiet_over, run_task
from tests.test_tasks_redis import (
    WORKER_COMMANDS,
    forget_queue,
    redis_settings,
    running_worker,
)

# Runs a normal worker (`remote-dx worker` code path) whose task sleeps first, so it can be
# killed in the middle. The hook lives here, not in the product.
SLOW_WORKER = """
import time
import remote_dx.pipeline as pipeline
real = pipeline.process_study
def slow(*args, **kwargs):
    time.sleep(120)
    return real(*args, **kwargs)
pipeline.process_study = slow
from remote_dx.core.settings import get_settings
from remote_dx.tasks import run_worker
raise SystemExit(run_worker(get_settings()))
"""


@pytest.fixture
def reconciling(settings: Settings) -> Settings:
    return settings.model_copy(update={"reconcile_after_seconds": 30.0, "max_task_attempts": 3})


@pytest.fixture
def embedded_later(reconciling: Settings) -> Iterator[list[tasks.EmbeddedWorker]]:
    started: list[tasks.EmbeddedWorker] = []
    yield started
    for worker in started:
        worker.stop()


def _study(sessions: sessionmaker[Session], study_uid: str) -> tuple[Study, TaskRun | None]:
    with sessions() as session:
        study = session.scalar(select(Study).where(Study.study_uid == study_uid))
        assert study is not None
        run = session.scalar(select(TaskRun).where(TaskRun.study_pk == study.id))
        return study, run


def _processed_once(sessions: sessionmaker[Session], study_uid: str) -> bool:
    study, run = _study(sessions, study_uid)
    return study.status == StudyStatus.PROCESSED and run is not None and run.status == "succeeded"


def _worklist_items(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return len(session.scalars(select(WorklistItem)).all())


def _file_and_queue(config: Settings, db: sessionmaker[Session]) -> str:
    """File a study, let its quiet period pass and have a sweeper queue + enqueue it."""
    study_uid = generate_uid()
    file(config, db, part10(make_dx(study_uid)))
    quiet_over(config)
    result = tasks.Sweeper(config).run_once()
    assert result.queued == [study_uid] and result.enqueued == 1
    return study_uid


def test_lost_message_is_reissued_after_reconcile_after(
    reconciling: Settings, db: sessionmaker[Session], embedded_later: list
) -> None:
    config = reconciling
    tasks.configure(config)
    study_uid = _file_and_queue(config, db)
    # The broker loses the message (a crash of the filesystem queue, a flushed Redis …).
    messages = list((config.broker_dir / "queue").glob("*.msg"))
    assert len(messages) == 1
    messages[0].unlink()

    embedded_later.append(tasks.start_embedded_worker(config))
    # Before reconcile_after nothing is re-issued …
    assert tasks.Sweeper(config).run_once().reissued == []
    assert _study(db, study_uid)[0].status == StudyStatus.QUEUED
    # … after it, the worker's own sweeper re-issues the study and it is processed.
    clock.advance(timedelta(seconds=config.reconcile_after_seconds + 1))
    wait_until(
        lambda: _processed_once(db, study_uid),
        timeout=15,
        message="the re-issued study to be processed",
    )
    assert _study(db, study_uid)[1].attempts == 1  # type: ignore[union-attr]
    assert _worklist_items(db) == 1


def test_concurrent_reconcilers_reissue_once(
    reconciling: Settings, db: sessionmaker[Session]
) -> None:
    study_uid = generate_uid()
    file(reconciling, db, part10(make_dx(study_uid)))
    quiet_over(reconciling)
    assert sweep_ready_studies(db, quiet_seconds=reconciling.quiet_seconds) == [study_uid]
    clock.advance(timedelta(seconds=reconciling.reconcile_after_seconds + 1))
    now = clock.utcnow()
    kwargs = {
        "reconcile_after_seconds": reconciling.reconcile_after_seconds,
        "max_attempts": reconciling.max_task_attempts,
        "now": now,
    }
    assert reconcile_stale_studies(db, **kwargs) == [study_uid]
    assert reconcile_stale_studies(db, **kwargs) == []  # the lease was renewed by the first


def test_a_study_that_keeps_failing_is_failed_after_max_attempts(
    reconciling: Settings, db: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = reconciling
    tasks.configure(config)
    study_uid = generate_uid()
    file(config, db, part10(make_dx(study_uid)))
    quiet_over(config)
    sweep_ready_studies(db, quiet_seconds=config.quiet_seconds)

    def broken(*_args: object, **_kwargs: object) -> None:
        raise ValueError("pixel module is nonsense")

    monkeypatch.setattr(pipeline, "process_study", broken)
    for attempt in range(1, config.max_task_attempts + 1):
        outcome = run_task(study_uid)
        assert outcome["result"] == "failed"
        study, run = _study(db, study_uid)
        assert run is not None and run.attempts == attempt and run.status == "failed"
        assert "pixel module is nonsense" in (run.error or "")
        if attempt < config.max_task_attempts:
            assert study.status == StudyStatus.QUEUED  # the reconciler will try again
            clock.advance(timedelta(seconds=config.reconcile_after_seconds + 1))
            assert tasks.Sweeper(config, enqueue=lambda _uid: True).run_once().reissued == [
                study_uid
            ]
    assert _study(db, study_uid)[0].status == StudyStatus.FAILED


def test_crashing_workers_make_the_reconciler_give_up(
    reconciling: Settings, db: sessionmaker[Session]
) -> None:
    config = reconciling
    study_uid = generate_uid()
    file(config, db, part10(make_dx(study_uid)))
    quiet_over(config)
    sweep_ready_studies(db, quiet_seconds=config.quiet_seconds)
    kwargs = {
        "reconcile_after_seconds": config.reconcile_after_seconds,
        "max_attempts": config.max_task_attempts,
    }
    for _ in range(config.max_task_attempts):
        start_run(db, study_uid)  # a worker starts the task … and dies (no finish recorded)
        clock.advance(timedelta(seconds=config.reconcile_after_seconds + 1))
        reissued = reconcile_stale_studies(db, **kwargs)
    assert reissued == []
    study, run = _study(db, study_uid)
    assert study.status == StudyStatus.FAILED
    assert run is not None and run.status == "failed"
    assert (
        run.error
        == f"gave up after {config.max_task_attempts} attempts: worker lost during the task"
    )


def test_transient_errors_never_use_up_attempts(
    reconciling: Settings, db: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = reconciling.model_copy(update={"max_task_attempts": 1})
    tasks.configure(config)
    study_uid = generate_uid()
    file(config, db, part10(make_dx(study_uid)))
    quiet_over(config)
    sweep_ready_studies(db, quiet_seconds=config.quiet_seconds)

    calls: list[int] = []

    def storage_down(*_args: object, **_kwargs: object) -> None:
        calls.append(1)
        raise StorageUnavailable("object store unreachable")

    monkeypatch.setattr(pipeline, "process_study", storage_down)
    result = tasks.process_study.apply(args=[study_uid])
    assert result.failed() and isinstance(result.result, StorageUnavailable)
    assert len(calls) == tasks.process_study.max_retries + 1  # Celery retried with backoff
    study, run = _study(db, study_uid)
    assert study.status == StudyStatus.QUEUED
    assert run is not None and run.status == "retrying" and run.attempts == 0
    clock.advance(timedelta(seconds=config.reconcile_after_seconds + 1))
    assert tasks.Sweeper(config, enqueue=lambda _uid: True).run_once().reissued == [study_uid]
    assert _study(db, study_uid)[0].status == StudyStatus.QUEUED  # not FAILED


@pytest.mark.slow
def test_worker_killed_mid_task_filesystem_broker(
    reconciling: Settings, db: sessionmaker[Session], tmp_path: Path, embedded_later: list
) -> None:
    config = reconciling
    tasks.configure(config)
    study_uid = _file_and_queue(config, db)
    with running_worker(
        [sys.executable, "-c", SLOW_WORKER], config, tmp_path / "slow-worker.log"
    ) as slow:

        def task_running() -> bool:
            slow.assert_alive()
            run = _study(db, study_uid)[1]
            return run is not None and run.status == "running"

        wait_until(task_running, timeout=30, message="the slow worker to start the task")
        slow.kill()  # SIGKILL to the whole process group, in the middle of the task
        slow.process.wait(10)

    study, run = _study(db, study_uid)
    assert study.status == StudyStatus.QUEUED and run is not None and run.attempts == 1
    # The filesystem transport removed the message when it was delivered: only the database
    # remembers the study.
    assert not list((config.broker_dir / "queue").glob("*.msg"))

    embedded_later.append(tasks.start_embedded_worker(config))
    clock.advance(timedelta(seconds=config.reconcile_after_seconds + 1))
    wait_until(
        lambda: _processed_once(db, study_uid),
        timeout=15,
        message="the study to be processed after the reconciler re-issued it",
    )
    assert _study(db, study_uid)[1].attempts == 2  # type: ignore[union-attr]
    assert _worklist_items(db) == 1


@pytest.mark.slow
@pytest.mark.redis
def test_worker_killed_mid_task_redis_redelivers(
    settings: Settings, db: sessionmaker[Session], redis_url: str, tmp_path: Path
) -> None:
    # The reconciler is pushed far away: the redelivery must come from acks_late + Redis.
    config = redis_settings(
        settings, redis_url, broker_visibility_timeout=3, reconcile_after_seconds=3600.0
    )
    tasks.configure(config)
    try:
        study_uid = _file_and_queue(config, db)
        with running_worker(
            [sys.executable, "-c", SLOW_WORKER], config, tmp_path / "slow-worker.log"
        ) as slow:

            def task_running() -> bool:
                slow.assert_alive()
                run = _study(db, study_uid)[1]
                return run is not None and run.status == "running"

            wait_until(task_running, timeout=30, message="the slow worker to start the task")
            slow.kill()
            slow.process.wait(10)
        assert _study(db, study_uid)[0].status == StudyStatus.QUEUED

        with running_worker(
            WORKER_COMMANDS["remote-dx worker"], config, tmp_path / "worker.log"
        ) as worker:

            def done() -> bool:
                worker.assert_alive()
                return _processed_once(db, study_uid)

            wait_until(
                done,
                timeout=45,
                interval=0.2,
                message="Redis to redeliver the task after the visibility timeout",
            )
        assert _study(db, study_uid)[1].attempts == 2  # type: ignore[union-attr]
        assert _worklist_items(db) == 1
    finally:
        forget_queue(redis_url, config.broker_queue)
