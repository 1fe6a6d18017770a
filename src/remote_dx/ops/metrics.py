"""Prometheus metrics (text exposition format 0.0.4) for every process kind of the hub.

What is measured:

- ``rdx_http_requests_total{method,route,status}`` and ``rdx_http_request_duration_seconds``
  (histogram) — by route template (``/api/v1/studies/{study_uid}``), never the raw path, so the
  number of series stays bounded; paths no route matched count as ``route="unmatched"``.
- ``rdx_cstore_instances_total{device,status}``, ``rdx_cstore_bytes_total{device}``,
  ``rdx_cstore_failures_total{device,status}`` and ``rdx_cstore_duration_seconds`` — C-STORE
  (PS3.4 B.2) by calling AE title and the DIMSE status answered (``0x0000``, ``0xA700`` …).
- ``rdx_tasks_total{task,outcome}`` — Celery tasks ``succeeded`` / ``failed`` / ``retried``.
- ``rdx_queue_depth`` and ``rdx_studies{status}`` — studies not yet processed, read from the
  database at scrape time (the database, not the broker, is the source of truth for work).
- ``rdx_worklist_items{status,priority}`` — the worklist, from the database at scrape time.

Several processes (receivers, prefork worker children, API processes) each count for
themselves. Two ways to see them all, both standard ``prometheus_client`` usage:

1. **Multi-process mode** — set ``RDX_METRICS_DIR`` (or ``PROMETHEUS_MULTIPROC_DIR``) to a
   folder shared by the processes of one host, emptied when they start; every process writes its
   counters there (memory-mapped files) and any exposer (``/metrics`` of the API,
   ``--metrics-port`` of ``scp`` / ``worker``) reports the sum.
2. **Per process** — without it, each process exposes its own counters (``/metrics`` on the API,
   ``remote-dx scp --metrics-port``, ``remote-dx worker --metrics-port``) and Prometheus sums
   over targets. ``worker --metrics-port`` switches multi-process mode on by itself (a folder
   under ``data_dir/metrics``), since its prefork children run the tasks.

The mode is fixed when ``prometheus_client`` is first imported, which is why the variable is
copied here before the import.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

if os.environ.get("RDX_METRICS_DIR") and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.environ["RDX_METRICS_DIR"]
    os.makedirs(os.environ["RDX_METRICS_DIR"], exist_ok=True)

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)

__all__ = ["CONTENT_TYPE_LATEST", "render", "serve_metrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

HTTP_REQUESTS = Counter(
    "rdx_http_requests", "HTTP requests answered", ["method", "route", "status"]
)
HTTP_LATENCY = Histogram(
    "rdx_http_request_duration_seconds",
    "Time to answer an HTTP request (headers sent)",
    ["method", "route"],
    buckets=_LATENCY_BUCKETS,
)
CSTORE_INSTANCES = Counter(
    "rdx_cstore_instances", "C-STORE requests answered, by DIMSE status", ["device", "status"]
)
CSTORE_BYTES = Counter(
    "rdx_cstore_bytes", "Bytes of instances stored by C-STORE (success only)", ["device"]
)
CSTORE_FAILURES = Counter(
    "rdx_cstore_failures", "C-STORE requests answered with a failure status", ["device", "status"]
)
CSTORE_LATENCY = Histogram(
    "rdx_cstore_duration_seconds",
    "Time from a received C-STORE data set to its answer (filing included)",
    buckets=_LATENCY_BUCKETS,
)
TASKS = Counter("rdx_tasks", "Celery tasks by outcome", ["task", "outcome"])


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


# -- HTTP ---------------------------------------------------------------------------------------


def observe_http(method: str, route: str, status: int, seconds: float) -> None:
    HTTP_REQUESTS.labels(method, route, str(status)).inc()
    HTTP_LATENCY.labels(method, route).observe(seconds)


# -- C-STORE ------------------------------------------------------------------------------------


def _status_of(answer: object) -> int:
    if isinstance(answer, int):
        return answer
    return int(getattr(answer, "Status", 0xC000))


def observe_cstore(device: str, status: int, size: int, seconds: float) -> None:
    label = f"0x{status:04X}"
    CSTORE_INSTANCES.labels(device, label).inc()
    CSTORE_LATENCY.observe(seconds)
    if status == 0x0000:
        CSTORE_BYTES.labels(device).inc(size)
    elif not 0xB000 <= status <= 0xBFFF:  # warnings (PS3.4 B.2.3) are stored, not failed
        CSTORE_FAILURES.labels(device, label).inc()


def instrument_store(handler: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Wrap the receiver's EVT_C_STORE handler: count, size, time and status per device.

    Wrapped where the receiver binds its handlers, so the counts are of what the modality was
    answered, whatever path the request took inside.
    """

    def on_store(event: Any) -> Any:
        started = time.perf_counter()
        try:
            device = str(event.assoc.requestor.ae_title).strip() or "unknown"
        except Exception:
            device = "unknown"
        status = 0x0110
        try:
            answer = handler(event)
            status = _status_of(answer)
            return answer
        finally:
            try:
                size = len(event.request.DataSet.getvalue())  # no copy (see part10_bytes)
            except Exception:
                size = 0
            observe_cstore(device, status, size, time.perf_counter() - started)

    on_store.__wrapped__ = handler  # type: ignore[attr-defined]
    return on_store


# -- Celery -------------------------------------------------------------------------------------

_celery_hooked = False


def install_task_metrics() -> None:
    """Count task outcomes and bind the task's study to the log context (Celery signals).

    The signals fire in the process that runs the task (a prefork child), hence multi-process
    mode for workers.
    """
    global _celery_hooked
    if _celery_hooked:
        return
    from celery import signals

    from remote_dx.ops.logging import study_uid_var

    def _name(sender: Any) -> str:
        return str(getattr(sender, "name", None) or sender or "unknown")

    def prerun(task: Any = None, args: Any = None, **_: Any) -> None:
        if task is not None and getattr(task, "name", "") == "remote_dx.process_study" and args:
            study_uid_var.set(str(args[0]))

    def postrun(**_: Any) -> None:
        study_uid_var.set(None)

    def succeeded(sender: Any = None, **_: Any) -> None:
        TASKS.labels(_name(sender), "succeeded").inc()

    def failed(sender: Any = None, **_: Any) -> None:
        TASKS.labels(_name(sender), "failed").inc()

    def retried(sender: Any = None, **_: Any) -> None:
        TASKS.labels(_name(sender), "retried").inc()

    signals.task_prerun.connect(prerun, weak=False)
    signals.task_postrun.connect(postrun, weak=False)
    signals.task_success.connect(succeeded, weak=False)
    signals.task_failure.connect(failed, weak=False)
    signals.task_retry.connect(retried, weak=False)
    _celery_hooked = True


# -- the database's view: queue depth and worklist ------------------------------------------


class DatabaseCollector(Collector):
    """Gauges read from the index at scrape time (bounded: two GROUP BY queries)."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def collect(self) -> Iterator[Metric]:
        from remote_dx.core.models import Study, StudyStatus, WorklistItem

        up = GaugeMetricFamily("rdx_metrics_database_up", "1 if the index answered this scrape")
        try:
            with self.sessions() as session:
                by_status = dict(
                    session.execute(select(Study.status, func.count()).group_by(Study.status)).all()
                )
                worklist = session.execute(
                    select(WorklistItem.status, WorklistItem.priority, func.count()).group_by(
                        WorklistItem.status, WorklistItem.priority
                    )
                ).all()
        except Exception as exc:  # a scrape must still answer when the database is down
            log.warning("metrics: database unavailable: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        studies = GaugeMetricFamily("rdx_studies", "Studies by status", labels=["status"])
        for status in StudyStatus:
            studies.add_metric([status.value], by_status.get(status, 0))
        yield studies
        pending = sum(by_status.get(s, 0) for s in (StudyStatus.RECEIVING, StudyStatus.QUEUED))
        yield GaugeMetricFamily(
            "rdx_queue_depth",
            "Studies received but not yet processed (receiving or queued)",
            value=pending,
        )
        items = GaugeMetricFamily(
            "rdx_worklist_items",
            "Worklist items by status and priority",
            labels=["status", "priority"],
        )
        for status, priority, count in worklist:
            items.add_metric([str(status.value), str(priority.value)], count)
        yield items


class _Process(Collector):
    """This process's metrics, or every process's in multi-process mode."""

    def collect(self) -> Iterable[Metric]:
        if multiprocess_dir():
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return registry.collect()
        return REGISTRY.collect()


def registry_for(sessions: sessionmaker[Session] | None) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Process())
    if sessions is not None:
        registry.register(DatabaseCollector(sessions))
    return registry


def render(sessions: sessionmaker[Session] | None) -> bytes:
    """The exposition text for ``/metrics``."""
    return generate_latest(registry_for(sessions))


def serve_metrics(port: int, sessions: sessionmaker[Session] | None, host: str = "0.0.0.0") -> Any:
    """Expose ``/metrics`` on its own port (receivers and workers have no web server)."""
    server, _thread = start_http_server(port, addr=host, registry=registry_for(sessions))
    log.info("metrics on http://%s:%d/metrics", host, server.server_port)
    return server
