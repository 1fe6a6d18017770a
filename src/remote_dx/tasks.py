"""The Celery app, its task, the study sweeper and the two ways to run a worker.

One app (``app``), configured from :class:`Settings` by :func:`configure`; the broker is the only
thing that differs between the modes:

- empty ``RDX_BROKER_URL`` → kombu's filesystem transport under ``data_dir/broker`` (no
  server; polled every ``broker_polling_interval`` s), with atomic message files
  (:mod:`remote_dx.filesystem_broker`). ``sqla+sqlite`` was measured here at one
  poll per second and is not offered.
- ``redis://…`` → Redis, with a ``visibility_timeout`` of minutes: with ``acks_late`` an
  unacknowledged task comes back only after it, and Celery's default is an hour.
- ``amqp://…`` → RabbitMQ (acknowledgements are native; nothing to tune).

Tasks are acknowledged late and rejected (requeued) when their worker is lost, retried with
exponential backoff and jitter on transient errors, and idempotent. The database, not the
broker, is the source of truth: the sweeper (:class:`Sweeper`, in every worker process) queues
ready studies and re-issues stale ones (:mod:`remote_dx.ingest.study`), so a lost message or a
killed worker delays a study and never loses it.

Ways to run a worker:

- :func:`start_embedded_worker` — inside ``remote-dx serve``: a real Celery ``WorkController``
  with the *threads* pool, started in a background thread. ``app.Worker`` (what ``celery worker``
  runs) installs signal handlers, which only works in the main thread, and the main thread of
  ``serve`` belongs to uvicorn; the bare WorkController installs none. Threads (not a child
  process) keep one SQLite engine and one test clock in the process, start in milliseconds and
  stop within the consumer's 2 s drain timeout.
- :func:`run_worker` — ``remote-dx worker`` (scale-out): ``app.Worker`` in the main thread, with
  the prefork pool, plus the sweeper.
- ``celery -A remote_dx.tasks worker`` — the same, configured from ``RDX_`` variables at import;
  the sweeper starts on ``worker_ready`` and stops on ``worker_shutdown``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celery import Celery, signals
from celery.apps.worker import Worker as CeleryWorker
from sqlalchemy.exc import OperationalError

from remote_dx import filesystem_broker, pipeline
from remote_dx.core import db as core_db
from remote_dx.core.clock import utcnow
from remote_dx.core.db import get_engine, get_sessionmaker, refresh_planner_statistics
from remote_dx.core.errors import DatabaseUnavailable, StorageUnavailable
from remote_dx.core.heap import freeze_startup_heap
from remote_dx.core.settings import Settings, get_settings
from remote_dx.ecg.service import preload_analysis
from remote_dx.ingest.study import (
    PROCESS_STUDY,
    RUN_FAILED,
    RUN_RETRYING,
    RUN_SUCCEEDED,
    fail_study,
    finish_run,
    reconcile_stale_studies,
    start_run,
    sweep_ready_studies,
)
from remote_dx.ops import worker_hooks as _ops_hooks
from remote_dx.routing.escalation import escalate_overdue
from remote_dx.storage.factory import get_store, reset_stores

log = logging.getLogger(__name__)

app = Celery("remote_dx")

# Errors that say "the infrastructure is down, try again later", never "this study is bad".
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    StorageUnavailable,
    DatabaseUnavailable,
    OperationalError,
)

_settings: Settings | None = None


def current_settings() -> Settings:
    """The settings the app was configured with (environment settings if never configured)."""
    return _settings if _settings is not None else get_settings()


@dataclass(frozen=True)
class BrokerFolders:
    queue: Path
    control: Path


def broker_folders(settings: Settings) -> BrokerFolders:
    root = settings.broker_dir.resolve()
    return BrokerFolders(queue=root / "queue", control=root / "control")


def _ensure_broker_folders(settings: Settings) -> None:
    if not settings.broker_url:
        folders = broker_folders(settings)
        folders.queue.mkdir(parents=True, exist_ok=True)
        folders.control.mkdir(parents=True, exist_ok=True)


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery configuration for ``settings`` (a plain dict: easy to read and to test)."""
    config: dict[str, Any] = {
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_ignore_result": True,  # outcomes live in the database (TaskRun)
        "result_backend": None,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_default_queue": settings.broker_queue,
        "task_always_eager": False,
        "broker_connection_retry_on_startup": True,
        "worker_send_task_events": False,
        "enable_utc": True,
        "timezone": "UTC",
    }
    url = settings.broker_url
    if not url:
        folders = broker_folders(settings)
        config["broker_url"] = f"{filesystem_broker.SCHEME}://localhost/"
        config["broker_transport_options"] = {
            # One folder for in and out: every process both publishes and consumes.
            "data_folder_in": str(folders.queue),
            "data_folder_out": str(folders.queue),
            "control_folder": str(folders.control),
            "polling_interval": settings.broker_polling_interval,
            "store_processed": False,
        }
        # Remote control rides on fanout exchanges that the filesystem transport emulates with
        # more files to poll; nothing here needs it.
        config["worker_enable_remote_control"] = False
    elif url.startswith(("redis://", "rediss://", "redis+socket://")):
        visibility = settings.broker_visibility_timeout
        config["broker_url"] = url
        config["broker_transport_options"] = {
            "visibility_timeout": visibility,
            # Look for abandoned (unacknowledged) messages a few times per visibility timeout,
            # not every 100 s (kombu's default interval × throttle).
            "unacked_restore_interval": max(1, min(10, visibility // 4)),
            "unacked_restore_throttle": 1,
            # A broker that vanishes without closing TCP must not hang a publish forever.
            "socket_timeout": 30,
            "socket_connect_timeout": 5,
        }
    else:
        config["broker_url"] = url
        config["broker_transport_options"] = {}
    return config


def configure(settings: Settings, *, make_folders: bool = True) -> Celery:
    """Point the app at the broker of ``settings``; may be called again (tests, CLI)."""
    global _settings
    _settings = settings
    app.conf.update(celery_config(settings))
    # Drop the app's references to connection/producer pools made for a previous configuration
    # (kombu keeps one pool per broker URL and options, so closing it here would break a later
    # configuration with the same broker).
    app._after_fork()
    if make_folders:
        _ensure_broker_folders(settings)
    app.set_default()  # pool threads look the app up as the default one
    return app


@app.task(
    bind=True,
    name="remote_dx.process_study",
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=TRANSIENT_ERRORS,
    retry_backoff=2,
    retry_backoff_max=120,
    retry_jitter=True,
    max_retries=8,
)
def process_study(self: Any, study_uid: str) -> dict[str, Any]:
    """Process one queued study (index, preview, validate, route). Idempotent.

    Records a TaskRun (attempts, outcome, error). Transient errors are re-raised so Celery
    retries with backoff; any other error is recorded and, after ``max_task_attempts``, the
    study is marked FAILED — otherwise the reconciler re-issues it later.
    """
    settings = current_settings()
    sessions = get_sessionmaker(settings)
    try:
        todo, why = pipeline.needs_processing(sessions, study_uid)
    except pipeline.StudyNotFound:
        log.warning("process_study: no study %s (deleted, or another hub's message)", study_uid)
        return {"study_uid": study_uid, "result": "unknown"}
    if not todo:
        log.info("process_study %s: nothing to do (%s)", study_uid, why)
        return {"study_uid": study_uid, "result": "skipped", "reason": why}

    attempt = start_run(sessions, study_uid)
    started = time.perf_counter()
    try:
        outcome = pipeline.process_study(
            study_uid, sessions=sessions, store=get_store(settings), task_name=PROCESS_STUDY
        )
    except TRANSIENT_ERRORS as exc:
        _record_quietly(sessions, study_uid, RUN_RETRYING, f"{type(exc).__name__}: {exc}")
        log.warning("process_study %s: %s (retry %d)", study_uid, exc, self.request.retries)
        raise
    except Exception as exc:
        attempts = finish_run(
            sessions,
            study_uid,
            status=RUN_FAILED,
            error="".join(traceback.format_exception(exc, limit=6)),
        )
        if attempts >= settings.max_task_attempts and fail_study(sessions, study_uid):
            log.error("study %s FAILED after %d attempts: %s", study_uid, attempts, exc)
        else:
            log.exception("process_study %s failed (attempt %d)", study_uid, attempt)
        return {"study_uid": study_uid, "result": "failed", "error": str(exc)}
    if outcome.result != "processed":  # "processed" recorded its run in the same transaction
        finish_run(sessions, study_uid, status=RUN_SUCCEEDED)
    log.info(
        "process_study %s: %s in %.2fs (attempt %d)",
        study_uid,
        outcome.result,
        time.perf_counter() - started,
        attempt,
    )
    return {"study_uid": study_uid, "result": outcome.result, "revision": outcome.revision}


@app.task(
    bind=True,
    name="remote_dx.deliver_report",
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=TRANSIENT_ERRORS,
    retry_backoff=2,
    retry_backoff_max=120,
    retry_jitter=True,
    max_retries=None,  # the delivery row counts attempts (settings.delivery_max_attempts)
)
def deliver_report(self: Any, delivery_id: int) -> dict[str, Any]:
    """Send one signed report back to its township (a ``Delivery`` row). Idempotent.

    A refused or failed C-STORE is retried with a doubling delay
    (``delivery_retry_seconds`` … ``delivery_retry_max_seconds``) until the row has used
    ``delivery_max_attempts``; then it is marked failed.
    """
    from remote_dx.reporting.export import delivery

    settings = current_settings()
    outcome = delivery.attempt_delivery(settings, delivery_id)
    if outcome.retry:
        raise self.retry(
            countdown=delivery.backoff_seconds(settings, outcome.attempts),
            max_retries=settings.delivery_max_attempts,
        )
    return outcome.as_dict()


def _record_quietly(sessions: Any, study_uid: str, status: str, error: str) -> None:
    try:
        finish_run(sessions, study_uid, status=status, error=error)
    except Exception:  # the database may be the thing that is down
        log.debug("could not record the task outcome", exc_info=True)


def enqueue_study(study_uid: str) -> bool:
    """Send ``process_study`` for the study; False (logged) if the broker refused.

    A study whose message could not be sent stays QUEUED and is re-issued by the reconciler.
    """
    settings = current_settings()
    try:
        process_study.apply_async(
            args=[study_uid],
            queue=settings.broker_queue,
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
        )
        return True
    except Exception as exc:  # broker down: kombu raises OperationalError and friends
        log.warning("could not enqueue study %s: %s", study_uid, exc)
        return False


@dataclass
class SweepResult:
    queued: list[str] = field(default_factory=list)
    reissued: list[str] = field(default_factory=list)
    enqueued: int = 0
    leases_expired: list[str] = field(default_factory=list)
    renotified: list[int] = field(default_factory=list)
    escalated: list[str] = field(default_factory=list)


class Sweeper:
    """Every ``sweep_interval`` s: queue ready studies, re-issue stale ones, enqueue them all,
    and escalate overdue worklist items one level up.

    Several sweepers (in several workers, on several hosts) may run at once: each study is
    claimed by one of them through a compare-and-set in the database.
    """

    def __init__(self, settings: Settings, enqueue: Any = None) -> None:
        self.settings = settings
        self.enqueue = enqueue or enqueue_study
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> SweepResult:
        settings = self.settings
        sessions = get_sessionmaker(settings)
        now = utcnow()
        result = SweepResult()
        result.queued = sweep_ready_studies(sessions, quiet_seconds=settings.quiet_seconds, now=now)
        result.reissued = reconcile_stale_studies(
            sessions,
            reconcile_after_seconds=settings.reconcile_after_seconds,
            max_attempts=settings.max_task_attempts,
            now=now,
        )
        for uid in [*result.queued, *result.reissued]:
            result.enqueued += bool(self.enqueue(uid))
        try:
            # Reading (issue 4): lapsed leases free their items; unacknowledged critical alerts
            # are notified again. A failure must not stop the sweep.
            from remote_dx.worklist.alerts import renotify_unacknowledged
            from remote_dx.worklist.lease import expire_leases

            result.leases_expired = expire_leases(sessions, now)
            result.renotified = renotify_unacknowledged(
                sessions, now, every_minutes=settings.alert_renotify_minutes
            )
        except Exception:
            log.exception("lease/alert sweep failed; retried on the next sweep")
        try:
            # Overdue studies move one level up (issue 4); a failure must not stop the sweep.
            result.escalated = escalate_overdue(sessions, now)
        except Exception:
            log.exception("overdue escalation failed; retried on the next sweep")
        # Signed reports whose delivery message was lost (issue 4, results that travel).
        from remote_dx.reporting.export.delivery import enqueue_delivery, reconcile_deliveries

        for delivery_id in reconcile_deliveries(sessions, settings, now):
            enqueue_delivery(delivery_id)
        try:
            # SQLite's query planner needs statistics someone gathers (see the function).
            refresh_planner_statistics(get_engine(settings))
        except Exception:
            log.exception("planner statistics not refreshed; retried on the next sweep")
        return result

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:  # DB down or similar: keep sweeping, the next round may work
                log.exception("study sweep failed")
            self._stop.wait(self.settings.sweep_interval)

    def start(self) -> Sweeper:
        self._thread = threading.Thread(target=self._loop, name="rdx-sweeper", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()


class EmbeddedWorker:
    """A Celery worker (threads pool) and a sweeper inside the current process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.controller = app.WorkController(
            hostname=f"embedded-{os.getpid()}@{socket.gethostname()}",
            pool_cls="threads",
            concurrency=max(1, settings.worker_concurrency),
            queues=[settings.broker_queue],
            loglevel=settings.log_level,
            without_heartbeat=True,
            without_mingle=True,
            without_gossip=True,
        )
        self.sweeper = Sweeper(settings)
        self._thread = threading.Thread(target=self._run, name="rdx-embedded-worker", daemon=True)
        self._error: BaseException | None = None

    def _run(self) -> None:
        try:
            # Here, not in start(): the hub answers while the worker thread imports.
            preload_analysis()
            self.controller.start()
        except BaseException as exc:  # logged and kept: the thread must not die silently
            self._error = exc
            log.exception("embedded worker stopped with an error")

    def start(self) -> EmbeddedWorker:
        self._thread.start()
        self.sweeper.start()
        return self

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 15.0) -> None:
        """Stop sweeping, then warm-stop the worker: running tasks finish, prefetched messages go
        back to the queue (kombu restores unacknowledged messages when the channel closes)."""
        self.sweeper.stop()
        if self._thread.is_alive():
            self.controller.stop(in_sighandler=False)
            self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("embedded worker did not stop within %.0fs", timeout)


def start_embedded_worker(settings: Settings) -> EmbeddedWorker:
    """Configure the app for ``settings`` and start a worker + sweeper in this process."""
    configure(settings)
    return EmbeddedWorker(settings).start()


def run_worker(settings: Settings) -> int:
    """Run a Celery worker in the foreground (``remote-dx worker``); returns its exit code.

    The sweeper starts with it (``worker_ready`` signal) so any number of workers, on any hosts,
    keep studies moving without a separate scheduler.
    """
    configure(settings)
    worker = app.Worker(
        hostname=f"remote-dx-{os.getpid()}@{socket.gethostname()}",
        concurrency=max(1, settings.worker_concurrency),
        queues=[settings.broker_queue],
        loglevel=settings.log_level,
        without_heartbeat=not settings.broker_url,
        without_mingle=not settings.broker_url,
        without_gossip=not settings.broker_url,
    )
    worker.start()
    return int(worker.exitcode or 0)


# --- worker lifecycle signals ----------------------------------------------------------------

_signal_sweeper: Sweeper | None = None


@signals.worker_init.connect
def _on_worker_init(sender: Any = None, **_: Any) -> None:
    _ensure_broker_folders(current_settings())
    if isinstance(sender, CeleryWorker):
        # A worker process of its own (`remote-dx worker`, `celery worker`): in the prefork
        # parent, so every child starts with the analysis imported and the heap frozen. The
        # embedded WorkController fires this signal too, in the thread that builds it (serve's
        # main thread, before the web server answers); it imports in its own thread instead
        # (EmbeddedWorker._run).
        preload_analysis()
        freeze_startup_heap()


@signals.worker_ready.connect
def _on_worker_ready(**_: Any) -> None:
    # Fired by ``celery worker`` / run_worker (app.Worker), not by the embedded WorkController,
    # which runs its own sweeper.
    global _signal_sweeper
    if _signal_sweeper is None or not _signal_sweeper.running:
        _signal_sweeper = Sweeper(current_settings()).start()


@signals.worker_shutdown.connect
def _on_worker_shutdown(**_: Any) -> None:
    global _signal_sweeper
    if _signal_sweeper is not None:
        _signal_sweeper.stop()
        _signal_sweeper = None


@signals.worker_process_init.connect
def _on_worker_process_init(**_: Any) -> None:
    """A prefork child must not use the parent's pooled DB/S3 connections.

    ``dispose(close=False)`` forgets them without closing: closing would also end the parent's
    sessions, which share the sockets.
    """
    for engine in list(core_db._engines.values()):
        engine.dispose(close=False)
    core_db._engines.clear()
    core_db._sessionmakers.clear()
    reset_stores()


# Task outcome counters and the task's study in the log context (issue 7, operations).
_ops_hooks.install_celery_hooks()

# ``celery -A remote_dx.tasks worker`` imports this module and nothing else: configure from the
# environment now (folders are made when a worker starts, not on every import).
configure(get_settings(), make_folders=False)
