"""Scale-out: workers as separate processes on a Redis broker (and PostgreSQL as the index).

The worker is started the two documented ways — ``remote-dx worker`` and
``celery -A remote_dx.tasks worker`` — configured only by ``RDX_`` variables, each with a queue of
its own so test runs sharing the machine's Redis never take each other's tasks. The test files
instances as the receiver would; the worker's own sweeper notices the quiet period and processes
the study. Workers are always killed at the end (SIGTERM, then SIGKILL: a worker whose broker went
away may ignore SIGTERM).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from remote_dx.core.db import get_sessionmaker, session_scope
from remote_dx.core.migrate import upgrade
from remote_dx.core.models import Study, StudyStatus, TaskRun, WorklistItem
from remote_dx.core.network import apply_network, load_network_file
from remote_dx.core.settings import Settings
from tests.conftest import settings_env
from tests.support import DEMO_NETWORK, wait_until
from tests.test_pipeline import COUNTY, file, make_dx, part10

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.redis


class WorkerProcess:
    """A worker in its own process group, so SIGKILL reaches the prefork children too."""

    def __init__(
        self,
        argv: list[str],
        settings: Settings,
        log_path: Path,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        env = {**os.environ, **settings_env(settings), **(extra_env or {})}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            argv,
            env=env,
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def assert_alive(self) -> None:
        if self.process.poll() is not None:
            raise AssertionError(f"worker exited ({self.process.returncode}):\n{self.log_tail()}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (warm shutdown), then SIGKILL for sure."""
        if self.process.poll() is None:
            self.kill(signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout)
        self.kill(signal.SIGKILL)  # also reaps children left behind by a killed parent
        if self.process.poll() is None:
            self.process.wait(10)
        self._log.close()


@contextmanager
def running_worker(
    argv: list[str], settings: Settings, log_path: Path, extra_env: dict[str, str] | None = None
) -> Iterator[WorkerProcess]:
    worker = WorkerProcess(argv, settings, log_path, extra_env)
    try:
        yield worker
    finally:
        worker.stop()


def redis_settings(settings: Settings, redis_url: str, **update: object) -> Settings:
    return settings.model_copy(
        update={
            "broker_url": redis_url,
            "broker_queue": f"rdx-test-{uuid.uuid4().hex[:12]}",
            "broker_visibility_timeout": 60,
            "worker_concurrency": 2,
            **update,
        }
    )


def forget_queue(redis_url: str, queue: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        client.delete(queue, f"_kombu.binding.{queue}")
    finally:
        client.close()


def wait_processed(
    sessions: sessionmaker[Session], study_uid: str, worker: WorkerProcess, timeout: float = 45
) -> None:
    def done() -> bool:
        worker.assert_alive()
        with sessions() as session:
            study = session.scalar(select(Study).where(Study.study_uid == study_uid))
            return study is not None and study.status == StudyStatus.PROCESSED

    wait_until(
        done,
        timeout=timeout,
        interval=0.2,
        message=f"study processed; worker log:\n{worker.log_path}",
    )


def assert_routed_once(sessions: sessionmaker[Session], study_uid: str) -> None:
    with sessions() as session:
        study = session.scalar(select(Study).where(Study.study_uid == study_uid))
        assert study is not None
        items = session.scalars(select(WorklistItem).where(WorklistItem.study_pk == study.id))
        (item,) = items.all()
        assert item.pool.name == COUNTY
        run = session.scalar(select(TaskRun).where(TaskRun.study_pk == study.id))
        assert run is not None and run.status == "succeeded"


WORKER_COMMANDS = {
    "remote-dx worker": [str(BIN / "remote-dx"), "worker"],
    "celery -A remote_dx.tasks worker": [
        str(BIN / "celery"),
        "-A",
        "remote_dx.tasks",
        "worker",
        "--loglevel",
        "INFO",
    ],
}


@pytest.mark.parametrize("command", WORKER_COMMANDS)
def test_worker_process_on_redis_processes_a_study(
    settings: Settings, db: sessionmaker[Session], redis_url: str, tmp_path: Path, command: str
) -> None:
    config = redis_settings(settings, redis_url)
    study_uid = generate_uid()
    try:
        with running_worker(WORKER_COMMANDS[command], config, tmp_path / "worker.log") as worker:
            for number in (1, 2):
                file(config, db, part10(make_dx(study_uid, instance_number=number)))
            wait_processed(db, study_uid, worker)
            assert_routed_once(db, study_uid)
    finally:
        forget_queue(redis_url, config.broker_queue)


@pytest.mark.postgres
def test_postgres_and_redis_worker_processes_a_study(
    settings: Settings, redis_url: str, postgres_database: str, tmp_path: Path
) -> None:
    config = redis_settings(settings, redis_url, database_url=postgres_database)
    upgrade(config)
    with session_scope(config) as session:
        apply_network(session, load_network_file(DEMO_NETWORK), with_passwords=False)
    sessions = get_sessionmaker(config)
    study_uid = generate_uid()
    try:
        with running_worker(
            WORKER_COMMANDS["remote-dx worker"], config, tmp_path / "worker.log"
        ) as worker:
            file(config, sessions, part10(make_dx(study_uid)))
            wait_processed(sessions, study_uid, worker)
            assert_routed_once(sessions, study_uid)
    finally:
        forget_queue(redis_url, config.broker_queue)


@pytest.mark.slow
def test_worker_process_on_rabbitmq_processes_a_study(
    settings: Settings, db: sessionmaker[Session], tmp_path: Path
) -> None:
    """``amqp://`` works too (RabbitMQ acknowledges natively; no visibility timeout)."""
    from tests.support import port_open

    if not port_open("127.0.0.1", 5672):
        pytest.skip("RabbitMQ is not reachable on 127.0.0.1:5672")
    config = settings.model_copy(
        update={
            "broker_url": os.environ.get(
                "RDX_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//"
            ),
            "broker_queue": f"rdx-test-{uuid.uuid4().hex[:12]}",
        }
    )
    study_uid = generate_uid()
    try:
        with running_worker(
            WORKER_COMMANDS["remote-dx worker"], config, tmp_path / "worker.log"
        ) as worker:
            file(config, db, part10(make_dx(study_uid)))
            wait_processed(db, study_uid, worker)
            assert_routed_once(db, study_uid)
    finally:
        from kombu import Connection

        with Connection(config.broker_url, connect_timeout=5) as conn:
            conn.default_channel.queue_delete(config.broker_queue)
