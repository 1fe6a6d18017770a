"""The embedded default: a real Celery worker on kombu's filesystem broker inside the process.

No server: messages are files under ``data_dir/broker``. Instances are filed as the receiver
would file them; the in-process sweeper notices the quiet period (2 s in the test settings), the
worker processes the study, and the county's worklist item appears.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from remote_dx import tasks
from remote_dx.core.models import Study, StudyStatus, TaskRun, WorklistItem
from remote_dx.core.settings import Settings
from tests.support import wait_until
from tests.test_pipeline import COUNTY, file, make_dx, part10


@pytest.fixture
def embedded(settings: Settings, db: sessionmaker[Session]) -> Iterator[tasks.EmbeddedWorker]:
    worker = tasks.start_embedded_worker(settings)
    yield worker
    worker.stop()


def _processed(sessions: sessionmaker[Session], study_uid: str) -> Study | None:
    """The study once it is PROCESSED and its task run is recorded as succeeded."""
    with sessions() as session:
        study = session.scalar(select(Study).where(Study.study_uid == study_uid))
        if study is None or study.status != StudyStatus.PROCESSED:
            return None
        run = session.scalar(select(TaskRun).where(TaskRun.study_pk == study.id))
        if run is None or run.status != "succeeded":
            return None
        _ = study.worklist_item and study.worklist_item.pool
        return study


def test_configuration_uses_the_filesystem_broker_under_the_data_dir(settings: Settings) -> None:
    tasks.configure(settings)
    conf = tasks.app.conf
    assert conf.broker_url.startswith("rdxfs://")
    options = conf.broker_transport_options
    queue = settings.broker_dir.resolve() / "queue"
    assert options["data_folder_in"] == options["data_folder_out"] == str(queue)
    assert options["polling_interval"] == settings.broker_polling_interval
    assert options["store_processed"] is False
    assert queue.is_dir() and (settings.broker_dir / "control").is_dir()
    assert conf.task_acks_late and conf.worker_prefetch_multiplier == 1
    assert conf.task_ignore_result and not conf.task_always_eager
    assert tasks.process_study.acks_late and tasks.process_study.reject_on_worker_lost


def test_redis_and_amqp_configuration(settings: Settings) -> None:
    redis = settings.model_copy(
        update={"broker_url": "redis://127.0.0.1:6379/3", "broker_visibility_timeout": 240}
    )
    config = tasks.celery_config(redis)
    assert config["broker_url"] == "redis://127.0.0.1:6379/3"
    assert config["broker_transport_options"]["visibility_timeout"] == 240
    amqp = tasks.celery_config(
        settings.model_copy(update={"broker_url": "amqp://guest:guest@127.0.0.1:5672//"})
    )
    assert amqp["broker_url"].startswith("amqp://")
    assert "visibility_timeout" not in amqp["broker_transport_options"]


def test_embedded_worker_processes_a_filed_study(
    settings: Settings, db: sessionmaker[Session], embedded: tasks.EmbeddedWorker
) -> None:
    study_uid = generate_uid()
    series_uid = generate_uid()
    filed_at = time.monotonic()
    for number in (1, 2, 3):
        file(
            settings, db, part10(make_dx(study_uid, series_uid=series_uid, instance_number=number))
        )

    study = wait_until(
        lambda: _processed(db, study_uid),
        timeout=15,
        message="the study to be processed by the embedded worker",
    )
    elapsed = time.monotonic() - filed_at
    assert isinstance(study, Study)
    assert study.worklist_item is not None and study.worklist_item.pool.name == COUNTY
    assert study.num_instances == 3
    # quiet period (2 s) + sweep interval (0.2 s) + polling (0.1 s) + processing, with slack
    assert elapsed < settings.quiet_seconds + 5, elapsed
    with db() as session:
        run = session.scalar(select(TaskRun))
        assert run is not None and (run.status, run.attempts) == ("succeeded", 1)
        assert len(session.scalars(select(WorklistItem)).all()) == 1
    # Nothing is left in the queue folder once the work is done.
    assert not list((settings.broker_dir / "queue").glob("*.msg"))


def test_enqueue_to_task_start_latency_on_the_filesystem_broker(
    settings: Settings, db: sessionmaker[Session], embedded: tasks.EmbeddedWorker
) -> None:
    """Measured figure for the report: time from publishing a message to the task starting."""
    started: dict[str, float] = {}
    real_needs = tasks.pipeline.needs_processing

    def note_start(sessions: sessionmaker[Session], study_uid: str) -> tuple[bool, str]:
        started[study_uid] = time.perf_counter()
        return real_needs(sessions, study_uid)

    tasks.pipeline.needs_processing = note_start  # type: ignore[assignment]
    try:
        sent: dict[str, float] = {}
        for _ in range(10):  # one at a time: the latency of a single study on an idle worker
            uid = generate_uid()
            sent[uid] = time.perf_counter()
            assert tasks.enqueue_study(uid)  # unknown studies: the task only looks them up
            wait_until(
                lambda uid=uid: uid in started,
                timeout=20,
                interval=0.005,
                message="the task to start",
            )
    finally:
        tasks.pipeline.needs_processing = real_needs  # type: ignore[assignment]
    latencies = sorted(started[uid] - sent[uid] for uid in sent)
    print(
        f"filesystem broker enqueue→start: median {latencies[len(latencies) // 2] * 1000:.0f} ms,"
        f" max {latencies[-1] * 1000:.0f} ms"
    )
    assert latencies[len(latencies) // 2] < 1.0


def test_stop_is_clean_and_quick(settings: Settings, db: sessionmaker[Session]) -> None:
    worker = tasks.start_embedded_worker(settings)
    wait_until(
        lambda: worker.alive and worker.sweeper.running,
        timeout=5,
        message="the worker thread to run",
    )
    began = time.monotonic()
    worker.stop()
    took = time.monotonic() - began
    assert not worker.alive and not worker.sweeper.running
    assert took < 5, f"stopping took {took:.1f}s"
