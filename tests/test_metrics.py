"""Operations (issue 7): ``/metrics``, ``X-Request-ID`` and JSON logs, per process and across
processes (Prometheus multi-process mode), for the API, the receiver and Celery tasks."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from remote_dx.api.app import create_app
from remote_dx.core.models import Study, StudyStatus, WorklistItem
from remote_dx.core.settings import Settings
from remote_dx.ingest.dicom_scp import start_receiver
from remote_dx.ops.logging import JsonFormatter, log_context
from remote_dx.tasks import app as celery_app
from remote_dx.tasks import configure, process_study
from tests.conftest import settings_env
from tests.support import ROOT, free_port, wait_until
from tests.test_api_worklist import populate
from tests.test_dicom_scp import c_store, echo, make_copy, truncated


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def scrape(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    values = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            values[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return values


def test_http_requests_counted_by_route_template_and_request_id_echoed(
    settings: Settings, db: sessionmaker[Session]
) -> None:
    client = TestClient(create_app(settings))
    route = "/api/v1/studies/{study_uid}"
    before = sample("rdx_http_requests_total", method="GET", route=route, status="401")

    given = client.get("/healthz", headers={"X-Request-ID": "lb-7f3a.42"})
    assert given.headers["x-request-id"] == "lb-7f3a.42"
    made = client.get("/api/v1/studies/1.2.840.1", headers={"X-Request-ID": "bad id\twith tab"})
    assert made.status_code == 401
    assert len(made.headers["x-request-id"]) == 32 and " " not in made.headers["x-request-id"]
    client.get("/api/v1/no/such/path")  # the viewer's fallback or a 404: never a new label

    body = client.get("/metrics")
    assert body.status_code == 200 and body.headers["content-type"].startswith("text/plain")
    values = scrape(body.text)
    key = (("method", "GET"), ("route", route), ("status", "401"))
    assert values[("rdx_http_requests_total", key)] == before + 1
    count = ("rdx_http_request_duration_seconds_count", (("method", "GET"), ("route", route)))
    assert values[count] >= 1
    # Raw paths never become labels (bounded series).
    assert "1.2.840.1" not in body.text and "/api/v1/no/such/path" not in body.text


def test_queue_depth_and_worklist_gauges_come_from_the_database(
    settings: Settings, db: sessionmaker[Session]
) -> None:
    populate(settings, db)
    with db() as session:
        pending = session.scalar(
            select(func.count(Study.id)).where(
                Study.status.in_([StudyStatus.RECEIVING, StudyStatus.QUEUED])
            )
        )
        items = session.execute(
            select(WorklistItem.status, WorklistItem.priority, func.count()).group_by(
                WorklistItem.status, WorklistItem.priority
            )
        ).all()
    assert pending and items
    values = scrape(TestClient(create_app(settings)).get("/metrics").text)
    assert values[("rdx_queue_depth", ())] == pending
    assert values[("rdx_metrics_database_up", ())] == 1
    for status, priority, count in items:
        labels = (("priority", priority.value), ("status", status.value))
        assert values[("rdx_worklist_items", labels)] == count


def test_metrics_answer_when_the_database_is_down(settings: Settings) -> None:
    dead = settings.model_copy(
        update={"database_url": f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/x"}
    )
    response = TestClient(create_app(dead)).get("/metrics")
    assert response.status_code == 200
    assert scrape(response.text)[("rdx_metrics_database_up", ())] == 0


def test_cstore_counted_by_device_status_and_bytes(
    settings: Settings, db: sessionmaker[Session], tmp_path: Path
) -> None:
    good = make_copy("CT_small.dcm", tmp_path)
    bad = truncated(make_copy("CT_small.dcm", tmp_path), 0.6)
    ok = sample("rdx_cstore_instances_total", device="XIPING_DR", status="0x0000")
    failed = sample("rdx_cstore_failures_total", device="XIPING_DR", status="0xC000")
    stored_bytes = sample("rdx_cstore_bytes_total", device="XIPING_DR")
    receiver = start_receiver(settings)
    try:
        assert c_store(receiver.port, [good, bad]) == [0x0000, 0xC000]
    finally:
        receiver.stop(timeout=1)
    assert sample("rdx_cstore_instances_total", device="XIPING_DR", status="0x0000") == ok + 1
    assert sample("rdx_cstore_failures_total", device="XIPING_DR", status="0xC000") == failed + 1
    # The data set as received (the file minus its 128-byte preamble and file meta).
    grew = sample("rdx_cstore_bytes_total", device="XIPING_DR") - stored_bytes
    assert 0.8 * good.stat().st_size < grew <= good.stat().st_size


def test_task_outcomes_counted_and_study_in_log_context(
    settings: Settings, db: sessionmaker[Session], caplog: pytest.LogCaptureFixture
) -> None:
    @celery_app.task(name="tests.metrics.boom", bind=True, max_retries=0)
    def boom(self) -> None:
        raise ValueError("boom")

    configure(settings)
    name = "remote_dx.process_study"
    succeeded = sample("rdx_tasks_total", task=name, outcome="succeeded")
    failed = sample("rdx_tasks_total", task="tests.metrics.boom", outcome="failed")
    seen: list[str | None] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(  # type: ignore[method-assign]
        json.loads(JsonFormatter().format(record)).get("study_uid")
    )
    logging.getLogger("remote_dx.tasks").addHandler(handler)
    try:
        with caplog.at_level(logging.INFO, logger="remote_dx.tasks"):
            process_study.apply(args=["1.2.3.4.5.6"])
    finally:
        logging.getLogger("remote_dx.tasks").removeHandler(handler)
    assert sample("rdx_tasks_total", task=name, outcome="succeeded") == succeeded + 1
    assert "1.2.3.4.5.6" in seen
    boom.apply()
    assert sample("rdx_tasks_total", task="tests.metrics.boom", outcome="failed") == failed + 1


def test_json_formatter_one_object_per_line_with_context_and_traceback() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("tests.jsonlog")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with log_context(request_id="r-1", user="county_reader", study_uid="1.2.3"):
            logger.info("报告已签发 %s", "ok", extra={"pool": "XXXRMYY"})
            try:
                raise RuntimeError("line one\nline two")
            except RuntimeError:
                logger.exception("failed")
        logger.warning("outside")
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    first, second, third = (json.loads(line) for line in lines)
    assert first["message"] == "报告已签发 ok" and first["level"] == "INFO"
    assert first["logger"] == "tests.jsonlog" and first["time"].endswith("Z")
    assert (first["request_id"], first["user"], first["study_uid"]) == (
        "r-1",
        "county_reader",
        "1.2.3",
    )
    assert first["pool"] == "XXXRMYY"
    assert "line two" in second["exc_info"] and second["request_id"] == "r-1"
    assert "request_id" not in third


def test_request_id_reaches_the_log_lines_of_the_request(
    settings: Settings, db: sessionmaker[Session]
) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    access = logging.getLogger("remote_dx.access")
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    try:
        client = TestClient(create_app(settings))
        client.get("/api/v1/studies/1.2.840.99", headers={"X-Request-ID": "trace-123"})
        token = client.post(
            "/api/v1/auth/token", data={"username": "county_reader", "password": "demo"}
        ).json()["access_token"]
        client.get(
            "/api/v1/studies/1.2.840.98",
            headers={"X-Request-ID": "trace-456", "Authorization": f"Bearer {token}"},
        )
    finally:
        access.removeHandler(handler)
    entries = [json.loads(line) for line in stream.getvalue().splitlines()]
    mine = [e for e in entries if e.get("request_id") == "trace-123"]
    assert mine, entries
    assert mine[0]["status"] == 401 and mine[0]["route"] == "/api/v1/studies/{study_uid}"
    assert mine[0]["study_uid"] == "1.2.840.99"
    known = [e for e in entries if e.get("request_id") == "trace-456"]
    assert known and known[0]["status"] == 404 and known[0]["user"] == "county_reader"


def test_multiprocess_mode_sums_the_counters_of_every_process(tmp_path: Path) -> None:
    folder = tmp_path / "prom"
    env = {**os.environ, "RDX_METRICS_DIR": str(folder)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    count = (
        "from remote_dx.ops import metrics; "
        "metrics.TASKS.labels('remote_dx.process_study', 'succeeded').inc({n})"
    )
    for n in (2, 3):
        subprocess.run([sys.executable, "-c", count.format(n=n)], env=env, check=True, timeout=60)
    render = "from remote_dx.ops import metrics; print(metrics.render(None).decode())"
    text = subprocess.run(
        [sys.executable, "-c", render], env=env, check=True, timeout=60, capture_output=True,
        text=True,
    ).stdout  # fmt: skip
    key = ("rdx_tasks_total", (("outcome", "succeeded"), ("task", "remote_dx.process_study")))
    assert scrape(text)[key] == 5


@pytest.mark.slow
def test_scp_metrics_port_and_json_logs_across_receiver_processes(
    settings: Settings, db: sessionmaker[Session], tmp_path: Path
) -> None:
    metrics_port = free_port()
    env = {**os.environ, **settings_env(settings), "RDX_LOG_FORMAT": "json"}
    log_path = tmp_path / "scp.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "remote_dx.cli", "scp", "--processes", "2",
             "--metrics-port", str(metrics_port)],
            env=env, cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_until(lambda: echo(settings.dicom_port), timeout=60, message="receiver")
        files = [make_copy("CT_small.dcm", tmp_path) for _ in range(4)]
        for path in files:  # one association each: the kernel spreads them over both processes
            assert c_store(settings.dicom_port, [path]) == [0]

        def counted() -> float:
            text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
            key = ("rdx_cstore_instances_total", (("device", "XIPING_DR"), ("status", "0x0000")))
            return scrape(text).get(key, 0)

        wait_until(lambda: counted() == 4, timeout=20, message="4 C-STOREs in the metrics")
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    time.sleep(0.2)
    lines = [line for line in log_path.read_text().splitlines() if line.strip()]
    assert lines
    for line in lines:
        entry = json.loads(line)  # every line one JSON object
        assert {"time", "level", "logger", "message"} <= entry.keys()
    assert any("association from XIPING_DR" in json.loads(line)["message"] for line in lines)


@pytest.mark.slow
@pytest.mark.redis
def test_worker_metrics_port_sums_its_prefork_children(
    settings: Settings, db: sessionmaker[Session], redis_url: str, tmp_path: Path
) -> None:
    """``remote-dx worker --metrics-port``: the task ran in a prefork child, the parent's port
    reports it (multi-process mode), with the database gauges."""
    from remote_dx.tasks import enqueue_study
    from tests.test_tasks_redis import forget_queue, redis_settings, running_worker

    config = redis_settings(settings, redis_url)
    port = free_port()
    argv = [sys.executable, "-m", "remote_dx.cli", "worker", "--concurrency", "1",
            "--metrics-port", str(port)]  # fmt: skip
    key = ("rdx_tasks_total", (("outcome", "succeeded"), ("task", "remote_dx.process_study")))
    try:
        with running_worker(argv, config, tmp_path / "worker.log") as worker:

            def scraped() -> dict:
                worker.assert_alive()
                try:
                    return scrape(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text)
                except httpx.HTTPError:
                    return {}

            wait_until(scraped, timeout=60, message="worker metrics port")
            configure(config)
            assert enqueue_study("1.2.826.0.1.3680043.8.498.777")  # unknown: succeeds, no-op
            wait_until(lambda: scraped().get(key) == 1, timeout=60, message="task counted")
            values = scraped()
            assert values[("rdx_metrics_database_up", ())] == 1
            assert ("rdx_queue_depth", ()) in values
    finally:
        forget_queue(redis_url, config.broker_queue)
