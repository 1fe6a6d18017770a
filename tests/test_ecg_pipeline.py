"""The ECG critical path through processing: upload → quiet period → process_study (analysis,
routing) → worklist, alerts, re-acquire notices and the ECG read API (issue 3, "Preliminary
analysis", "Rendering", and the proof "a STEMI-like ECG becomes STAT with an alert").

ECGs are synthetic (tests.ecg_samples: Gaussian P-QRS-T with known timing); the STEMI-like one
gets a 0.3 mV ST plateau in lead II from the J point into the T wave, limb leads derived from I
and II as a cart would (so III and aVF carry it and aVL shows the reciprocal depression).
Processing runs in-process through the Celery task (``Task.apply``) with the clock moved past
the quiet period; one test runs the embedded worker end to end and reports the latency.
"""

from __future__ import annotations

import io
import time
from datetime import timedelta

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from remote_dx import pipeline, tasks
from remote_dx.api.app import create_app
from remote_dx.core.db import get_sessionmaker
from remote_dx.core.models import (
    AlertSource,
    AnalysisStatus,
    CriticalAlert,
    ECGAnalysisRecord,
    Institution,
    Priority,
    ReacquireRequest,
    Study,
    WorklistItem,
)
from remote_dx.core.settings import Settings, reset_settings
from remote_dx.ecg.analysis import ALGORITHM_VERSION
from remote_dx.ecg.model import ECG
from remote_dx.ingest.study import sweep_ready_studies
from tests.ecg_samples import csv_text, synthetic_ecg
from tests.support import demo_hub_on, wait_until
from tests.test_ecg_upload_api import auth
from tests.test_pipeline import file, local_testdata, make_dx, part10, quiet_over, run_task

COUNTY_CODE = "XXXRMYY"


@pytest.fixture
def client(settings: Settings, db: sessionmaker[Session]) -> TestClient:
    tasks.configure(settings)
    client = TestClient(create_app(settings))
    # Log in before any test moves the clock: pyjwt checks "iat" against the real time.
    for username in ("tech_xiping", "county_reader", "province_reader"):
        auth(client, username)
    return client


def stemi_like(mv: float = 0.3, hr: float = 75.0) -> ECG:
    base = synthetic_ecg(hr=hr)
    t = np.arange(base.n_samples) / base.sampling_rate
    phase = t % (60.0 / hr)
    # Plateau from the J point (QRS ends ~0.28 s into each beat) fading into the T wave.
    st = np.where((phase > 0.28) & (phase < 0.42), mv, 0.0) + np.where(
        (phase >= 0.42) & (phase < 0.52), mv * (0.52 - phase) / 0.10, 0.0
    )
    recorded = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")
    leads = {n: v.copy() for n, v in base.leads.items() if n in recorded}
    leads["II"] = (leads["II"] + st).astype(np.float32)
    return ECG(leads=leads, sampling_rate=base.sampling_rate, patient=base.patient)


def noisy(sd_mv: float = 0.4) -> ECG:
    base = synthetic_ecg()
    rng = np.random.default_rng(7)
    leads = {
        n: (v + rng.normal(0, sd_mv, v.size)).astype(np.float32) for n, v in base.leads.items()
    }
    return ECG(leads=leads, sampling_rate=base.sampling_rate, patient=base.patient)


def upload_csv(client: TestClient, ecg: ECG, patient_id: str) -> str:
    response = client.post(
        "/api/v1/ecg",
        headers=auth(client, "tech_xiping"),
        files=[("files", ("cart.csv", csv_text(ecg), "text/csv"))],
        data={"patient_id": patient_id, "patient_sex": "M", "patient_birth_date": "19600101"},
    )
    assert response.status_code == 201, response.text
    return response.json()["study_uid"]


def process(settings: Settings, db: sessionmaker[Session], study_uid: str) -> None:
    quiet_over(settings)
    assert study_uid in sweep_ready_studies(db, quiet_seconds=settings.quiet_seconds)
    assert run_task(study_uid)["result"] == "processed"


def analysis(client: TestClient, study_uid: str, username: str = "county_reader"):
    return client.get(f"/api/v1/ecg/{study_uid}/analysis", headers=auth(client, username))


def item_of(db: sessionmaker[Session], study_uid: str) -> tuple[Study, WorklistItem]:
    with db() as session:
        study = session.scalar(select(Study).where(Study.study_uid == study_uid))
        assert study is not None and study.worklist_item is not None
        _ = study.worklist_item.pool
        return study, study.worklist_item


def test_stemi_like_ecg_becomes_stat_with_an_alert_for_the_county_pool(
    client: TestClient, settings: Settings, db: sessionmaker[Session]
) -> None:
    study_uid = upload_csv(client, stemi_like(), "STEMI-1")
    pending = analysis(client, study_uid, "tech_xiping")
    assert pending.status_code == 202 and pending.json()["status"] == "pending"

    process(settings, db, study_uid)

    study, item = item_of(db, study_uid)
    assert item.pool.code == COUNTY_CODE
    assert item.priority == Priority.STAT
    assert item.due_at == study.received_at + timedelta(minutes=10)
    assert item.routing_rule == "lead-hospital/ecg/stat(ecg-critical)"
    with db() as session:
        alerts = session.scalars(select(CriticalAlert)).all()
        assert len(alerts) == 1
        alert = alerts[0]
        county = session.scalar(select(Institution).where(Institution.code == COUNTY_CODE))
        assert county is not None
        assert (alert.pool_id, alert.study_pk, alert.source) == (
            county.id,
            study.id,
            AlertSource.ECG_ANALYSIS,
        )
        assert alert.origin_id == study.origin_id and alert.acknowledged_at is None
        assert [r["code"] for r in alert.reasons] == ["stemi_suspected"]

    response = analysis(client, study_uid)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "done" and body["algorithm_version"] == ALGORITHM_VERSION
    assert body["critical"]["critical"] is True
    assert {"II", "III", "aVF"} <= set(body["critical"]["stemi_leads"])
    stemi = next(s for s in body["statements"] if s["code"] == "stemi_suspected")
    assert "inferior" in stemi["en"] and "心肌梗死" in stemi["zh"]

    page = client.get("/api/v1/worklist", headers=auth(client, "county_reader")).json()
    entry = page["items"][0]
    assert entry["study_uid"] == study_uid and entry["priority"] == "stat"
    assert entry["ecg"]["critical"] is True and entry["ecg"]["status"] == "done"
    assert entry["ecg"]["heart_rate"] == pytest.approx(75, abs=3)

    # Processing again (a duplicate delivery, forced) raises no second alert.
    pipeline.process_study(study_uid, sessions=db, store=client.app.state.store, force=True)  # type: ignore[attr-defined]
    with db() as session:
        assert len(session.scalars(select(CriticalAlert)).all()) == 1
        assert len(session.scalars(select(ECGAnalysisRecord)).all()) == 1


@pytest.mark.postgres
def test_stemi_path_on_postgresql(
    settings: Settings, postgres_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same critical path with the scale-out database (JSON columns, the alert, the join)."""
    monkeypatch.setenv("RDX_DATABASE_URL", postgres_database)
    reset_settings()
    pg = demo_hub_on(settings, postgres_database)
    db = get_sessionmaker(pg)
    tasks.configure(pg)
    client = TestClient(create_app(pg))
    for username in ("tech_xiping", "county_reader"):
        auth(client, username)

    study_uid = upload_csv(client, stemi_like(), "PG-STEMI")
    process(pg, db, study_uid)
    study, item = item_of(db, study_uid)
    assert item.priority == Priority.STAT
    assert item.due_at == study.received_at + timedelta(minutes=10)
    with db() as session:
        assert len(session.scalars(select(CriticalAlert)).all()) == 1
    assert analysis(client, study_uid).json()["critical"]["critical"] is True
    entry = client.get("/api/v1/worklist", headers=auth(client, "county_reader")).json()
    assert entry["items"][0]["ecg"]["critical"] is True


def test_normal_ecg_is_routine_with_its_analysis_printout_leads_and_confirmation(
    client: TestClient, settings: Settings, db: sessionmaker[Session]
) -> None:
    study_uid = upload_csv(client, synthetic_ecg(hr=72), "NORMAL-1")
    process(settings, db, study_uid)

    study, item = item_of(db, study_uid)
    assert item.priority == Priority.ROUTINE
    assert item.due_at == study.received_at + timedelta(hours=2)
    with db() as session:
        assert session.scalars(select(CriticalAlert)).all() == []
        assert session.scalars(select(ReacquireRequest)).all() == []

    body = analysis(client, study_uid).json()
    assert body["heart_rate"] == pytest.approx(72, abs=3)
    assert body["rhythm"] == "sinus" and body["critical"]["critical"] is False
    for key in ("pr_ms", "qrs_ms", "qt_ms", "qtc_bazett_ms", "qtc_fridericia_ms", "axis_deg"):
        assert key in body
    assert body["quality"]["technically_unsatisfactory"] is False
    assert body["device_measurements"] is None and body["confirmed"] is None
    entry = client.get("/api/v1/worklist", headers=auth(client, "county_reader")).json()["items"]
    assert entry[0]["ecg"] == {
        "status": "done",
        "heart_rate": body["heart_rate"],
        "rhythm": "sinus",
        "critical": False,
        "technically_unsatisfactory": False,
    }
    detail = client.get(f"/api/v1/studies/{study_uid}", headers=auth(client, "county_reader"))
    assert detail.json()["ecg"]["rhythm"] == "sinus"
    # Not visible outside the county pool and the origin.
    assert analysis(client, study_uid, "province_reader").status_code == 404

    reader = auth(client, "county_reader")
    png = client.get(f"/api/v1/ecg/{study_uid}/render.png", headers=reader)
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(png.content))
    assert image.width > image.height > 1000  # A4 landscape at 200 dpi
    pdf = client.get(f"/api/v1/ecg/{study_uid}/render.pdf", headers=reader)
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
    svg = client.get(f"/api/v1/ecg/{study_uid}/render.svg", headers=reader)
    assert svg.status_code == 200 and b"<svg" in svg.content[:500]
    assert b"HR 72 bpm" in svg.content  # the machine's measurements in the header
    assert client.get(f"/api/v1/ecg/{study_uid}/render.gif", headers=reader).status_code == 422

    leads = client.get(f"/api/v1/ecg/{study_uid}/leads", headers=reader, params={"max_points": 500})
    assert leads.status_code == 200
    data = leads.json()
    assert data["units"] == "mV" and data["original_sampling_rate"] == 500
    assert len(data["leads"]) == 12 and all(len(v) <= 500 for v in data["leads"].values())
    assert max(data["leads"]["II"]) == pytest.approx(1.2, abs=0.1)  # the R peaks survive

    confirmed = {
        "measurements": {"heart_rate": 70, "pr_ms": 150, "qrs_ms": 90},
        "rhythm": "sinus",
        "statements": [{"code": "sinus", "zh": "窦性心律", "en": "Sinus rhythm"}],
        "comment": "正常心电图",
    }
    tech = client.put(
        f"/api/v1/ecg/{study_uid}/confirmed", headers=auth(client, "tech_xiping"), json=confirmed
    )
    assert tech.status_code == 403
    bad = client.put(
        f"/api/v1/ecg/{study_uid}/confirmed", headers=reader, json={"measurements": {"qrs": 1}}
    )
    assert bad.status_code == 422
    put = client.put(f"/api/v1/ecg/{study_uid}/confirmed", headers=reader, json=confirmed)
    assert put.status_code == 200, put.text
    after = analysis(client, study_uid).json()
    assert after["confirmed"]["measurements"]["heart_rate"] == 70
    assert after["confirmed"]["confirmed_by"] == "county_reader"
    assert after["confirmed"]["statements"][0]["zh"] == "窦性心律"
    # The machine's values are untouched beside the reader's.
    assert after["heart_rate"] == body["heart_rate"] and after["pr_ms"] == body["pr_ms"]
    svg = client.get(f"/api/v1/ecg/{study_uid}/render.svg", headers=reader)
    assert b"HR 70 bpm" in svg.content and b"confirmed" in svg.content


def test_technically_unsatisfactory_ecg_sends_a_reacquire_notice_to_the_township(
    client: TestClient, settings: Settings, db: sessionmaker[Session]
) -> None:
    study_uid = upload_csv(client, noisy(), "NOISY-1")
    process(settings, db, study_uid)

    body = analysis(client, study_uid).json()
    assert body["quality"]["technically_unsatisfactory"] is True
    assert "technically_unsatisfactory" in [s["code"] for s in body["statements"]]
    notices = client.get(
        "/api/v1/ecg/reacquire-requests", headers=auth(client, "tech_xiping")
    ).json()
    assert [n["study_uid"] for n in notices] == [study_uid]
    assert notices[0]["origin"] == "西坪镇卫生院" and notices[0]["patient_id"] == "NOISY-1"
    assert any("noisy" in r for r in notices[0]["reasons"])
    # Another township's technician does not see it.
    assert (
        client.get("/api/v1/ecg/reacquire-requests", headers=auth(client, "province_reader")).json()
        == []
    )
    # The study is still routed (a reader may still read what is readable).
    assert item_of(db, study_uid)[1].pool.code == COUNTY_CODE


def test_a_failing_analysis_is_recorded_and_the_study_still_routed(
    client: TestClient,
    settings: Settings,
    db: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(_ecg: ECG) -> None:
        raise RuntimeError("analysis bug")

    monkeypatch.setattr("remote_dx.ecg.analysis.analyze.analyze", broken)
    study_uid = upload_csv(client, synthetic_ecg(), "FAIL-1")
    process(settings, db, study_uid)
    _, item = item_of(db, study_uid)
    assert item.priority == Priority.ROUTINE and item.pool.code == COUNTY_CODE
    body = analysis(client, study_uid).json()
    assert body["status"] == "failed" and "analysis bug" in body["error"]
    with db() as session:
        record = session.scalar(select(ECGAnalysisRecord))
        assert record is not None and record.status == AnalysisStatus.FAILED


def test_an_ecg_received_by_c_store_is_analysed_too(
    client: TestClient, settings: Settings, db: sessionmaker[Session]
) -> None:
    data = local_testdata("waveform_ecg.dcm").read_bytes()
    study_uid = str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).StudyInstanceUID)
    file(settings, db, data, ae_title="XIPING_ECG")
    process(settings, db, study_uid)
    body = analysis(client, study_uid).json()
    assert body["status"] == "done" and body["heart_rate"] is not None
    # The cart's own measurements are kept beside the machine's.
    assert body["device_measurements"]["heart_rate"] is not None
    assert (
        client.get("/api/v1/worklist", headers=auth(client, "county_reader")).json()["items"][0][
            "ecg"
        ]["status"]
        == "done"
    )


def test_not_an_ecg_study_answers_404(
    client: TestClient, settings: Settings, db: sessionmaker[Session]
) -> None:
    study_uid = generate_uid()
    file(settings, db, part10(make_dx(study_uid)))
    response = analysis(client, study_uid, "tech_xiping")
    assert response.status_code == 404 and "no ECG" in response.json()["detail"]


def test_embedded_worker_upload_to_analysis_latency(
    settings: Settings, db: sessionmaker[Session]
) -> None:
    """End to end in the embedded mode; the figure is printed for the report (-s)."""
    worker = tasks.start_embedded_worker(settings)
    try:
        client = TestClient(create_app(settings))
        headers = auth(client, "county_reader")
        auth(client, "tech_xiping")
        started = time.monotonic()
        study_uid = upload_csv(client, stemi_like(), "E2E-1")
        uploaded = time.monotonic()

        def done() -> bool:
            return analysis(client, study_uid).status_code == 200

        wait_until(done, timeout=30, interval=0.05, message="the analysis to be available")
        available = time.monotonic()
    finally:
        worker.stop()
    body = client.get(f"/api/v1/ecg/{study_uid}/analysis", headers=headers).json()
    assert body["critical"]["critical"] is True
    _, item = item_of(db, study_uid)
    assert item.priority == Priority.STAT
    print(
        f"\nupload {1000 * (uploaded - started):.0f} ms; upload → analysis available "
        f"{available - uploaded:.2f} s (quiet period {settings.quiet_seconds:g} s, "
        f"sweep every {settings.sweep_interval:g} s)"
    )
    assert available - uploaded < settings.quiet_seconds + 5
