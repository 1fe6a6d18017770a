"""Statistics figures against hand-computed ones (issue 6 "Proof"), on SQLite and PostgreSQL.

The scenario (:mod:`tests.test_stats_scenario`) is built through the real workflow code; the
expected figures below are worked out by hand from its table. It crosses a month boundary that
differs between UTC and Asia/Shanghai: study C arrives 2026-02-01 00:30 in Shanghai, which is
still January in UTC, so it must count in February; B arrives 01-31 23:30 and is signed on
02-01, so its TAT counts in January (a cohort by receipt) and its signature in February's
workload.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date

import pytest
from sqlalchemy.orm import Session, sessionmaker

from remote_dx.core.db import get_sessionmaker, session_scope
from remote_dx.core.migrate import upgrade
from remote_dx.core.network import apply_network, load_network_file
from remote_dx.core.settings import Settings, reset_settings
from remote_dx.stats.queries import Dimension, StatsQuery, network, table
from remote_dx.stats.sql import Period, percentile_cont
from remote_dx.storage.factory import get_store
from tests.support import DEMO_NETWORK
from tests.test_stats_scenario import Scenario, build


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(request.param)


@pytest.fixture
def stats_db(
    backend: str,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> Iterator[tuple[sessionmaker[Session], Scenario]]:
    if backend == "postgres":
        url = request.getfixturevalue("postgres_database")
        monkeypatch.setenv("RDX_DATABASE_URL", url)
        reset_settings()
        settings = settings.model_copy(update={"database_url": url})
    upgrade(settings)
    with session_scope(settings) as session:
        apply_network(session, load_network_file(DEMO_NETWORK), with_passwords=True)
    sessions = get_sessionmaker(settings)
    scenario = build(settings, sessions, get_store(settings))
    yield sessions, scenario


def rows(sessions: sessionmaker[Session], name: str, **query: object) -> list[dict]:
    with sessions() as session:
        return table(session, name, StatsQuery(**query)).rows  # type: ignore[arg-type]


def by_period(found: list[dict]) -> dict[str, dict]:
    return {r["period"]: r for r in found}


def test_percentile_matches_postgres_definition() -> None:
    assert percentile_cont([], 0.5) is None
    assert percentile_cont([40.0, 120.0], 0.5) == 80.0
    assert percentile_cont([40.0, 120.0], 0.9) == pytest.approx(112.0)
    assert percentile_cont([9.0, 60.0, 1480.0], 0.9) == pytest.approx(1196.0)


def test_figures_by_shanghai_month(stats_db: tuple[sessionmaker[Session], Scenario]) -> None:
    sessions, _ = stats_db
    volumes = by_period(rows(sessions, "volumes", period=Period.MONTH))
    assert set(volumes) == {"2026-01", "2026-02"}
    jan, feb = volumes["2026-01"], volumes["2026-02"]
    # January: A and B (B at 23:30 on the 31st). February: C (UTC January!), D, E, F, G.
    assert (jan["received"], jan["read"], jan["read_upper"]) == (2, 2, 2)
    assert (jan["positive"], jan["positive_rate"], jan["upper_share"]) == (1, 50.0, 100.0)
    assert (feb["received"], feb["read"], feb["read_upper"], feb["read_above_county"]) == (
        5,
        3,
        3,
        1,
    )
    assert (feb["positive"], feb["positive_rate"], feb["critical"]) == (2, 66.7, 1)

    tat = by_period(rows(sessions, "turnaround", period=Period.MONTH))
    # January TATs 40 and 120 min; claim→sign 20 and 60.
    assert tat["2026-01"]["tat_median_min"] == pytest.approx(80.0, abs=0.05)
    assert tat["2026-01"]["tat_p90_min"] == pytest.approx(112.0, abs=0.05)
    assert tat["2026-01"]["claim_sign_median_min"] == pytest.approx(40.0, abs=0.05)
    assert tat["2026-01"]["claim_sign_p90_min"] == pytest.approx(56.0, abs=0.05)
    assert (tat["2026-01"]["sla_met"], tat["2026-01"]["sla_rate"]) == (2, 100.0)
    # February: F 9, D 60, C 1480 (24 h 40 min: past its 24 h imaging SLA); c→s 4, 10, 20.
    assert tat["2026-02"]["tat_median_min"] == pytest.approx(60.0, abs=0.05)
    assert tat["2026-02"]["tat_p90_min"] == pytest.approx(1196.0, abs=0.05)
    assert tat["2026-02"]["claim_sign_median_min"] == pytest.approx(10.0, abs=0.05)
    assert tat["2026-02"]["claim_sign_p90_min"] == pytest.approx(18.0, abs=0.05)
    assert (tat["2026-02"]["sla_met"], tat["2026-02"]["sla_rate"]) == (2, 66.7)


def test_day_and_week_buckets_follow_shanghai_calendar(
    stats_db: tuple[sessionmaker[Session], Scenario],
) -> None:
    sessions, _ = stats_db
    days = by_period(rows(sessions, "volumes", period=Period.DAY))
    assert days["2026-01-31"]["received"] == 2  # A, B
    assert days["2026-02-01"]["received"] == 1  # C (16:30 UTC on the 31st)
    weeks = by_period(rows(sessions, "volumes", period=Period.WEEK))
    # ISO weeks by their Monday: A, B, C (Sat/Sat/Sun) in the week of 01-26.
    assert weeks["2026-01-26"]["received"] == 3
    assert weeks["2026-02-09"]["received"] == 2  # D (Tue 02-10), F (Sun 02-15)
    assert sum(w["received"] for w in weeks.values()) == 7
    year = rows(sessions, "volumes", period=Period.YEAR)
    assert [(r["period"], r["received"], r["read"]) for r in year] == [("2026", 7, 5)]
    # A range in Shanghai dates: 02-01 only → C.
    one = rows(sessions, "volumes", period=None, start=date(2026, 2, 1), end=date(2026, 2, 1))
    assert one[0]["received"] == 1


def test_escalations_critical_quality_recognition(
    stats_db: tuple[sessionmaker[Session], Scenario],
) -> None:
    sessions, _ = stats_db
    esc = rows(sessions, "escalations", period=None)
    assert len(esc) == 1
    # D: consultation to the province. E and G (unread ECG, 2 h SLA): overdue → the city.
    assert (esc[0]["consultations"], esc[0]["auto_escalations"], esc[0]["studies"]) == (1, 2, 3)
    assert (esc[0]["to_city"], esc[0]["to_province"], esc[0]["to_county"]) == (2, 1, 0)

    crit = rows(sessions, "critical", period=Period.MONTH)
    assert [r["period"] for r in crit] == ["2026-02"]
    assert (crit[0]["alerts"], crit[0]["from_analysis"], crit[0]["acknowledged"]) == (1, 1, 1)
    assert crit[0]["unacknowledged"] == 0
    assert crit[0]["ack_median_min"] == pytest.approx(12.0, abs=0.05)

    quality = {r["label"]: r for r in rows(sessions, "quality", period=None, by=Dimension.TOWNSHIP)}
    assert quality["丁河镇卫生院"]["unsatisfactory"] == 1
    assert quality["丁河镇卫生院"]["sent_back"] == 1
    assert quality["西坪镇卫生院"]["unsatisfactory"] == 0
    assert quality["西坪镇卫生院"]["analysed"] == 1

    reused = rows(sessions, "recognition", period=Period.MONTH, by=Dimension.TOWNSHIP)
    assert [(r["period"], r["label"], r["exams_avoided"], r["imaging"]) for r in reused] == [
        ("2026-02", "丁河镇卫生院", 1, 1)
    ]


def test_dimensions_and_scope(stats_db: tuple[sessionmaker[Session], Scenario]) -> None:
    sessions, _ = stats_db
    towns = {r["label"]: r for r in rows(sessions, "volumes", period=None, by=Dimension.TOWNSHIP)}
    assert (towns["西坪镇卫生院"]["received"], towns["丁河镇卫生院"]["received"]) == (4, 3)
    county = rows(sessions, "volumes", period=None, by=Dimension.COUNTY)
    assert [(r["label"], r["received"]) for r in county] == [("西峡县人民医院", 7)]
    modality = {r["key"]: r["received"] for r in rows(sessions, "volumes", period=None,
                                                     by=Dimension.MODALITY)}  # fmt: skip
    assert modality == {"DX": 5, "ECG": 2}
    ecg = rows(sessions, "volumes", period=None, modality="ecg")
    assert ecg[0]["received"] == 2
    pools = {r["label"]: r["received"] for r in rows(sessions, "volumes", period=None,
                                                     by=Dimension.POOL)}  # fmt: skip
    # Read by (or now held by): county A B C F; province D; city E G (escalated).
    assert pools == {"西峡县人民医院": 4, "河南省人民医院": 1, "南阳市中心医院": 2}

    work = by_period(rows(sessions, "workload", period=Period.MONTH))
    # Workload counts by signing time: B signed 02-01 01:30 Shanghai counts in February.
    assert [(r["label"], r["signed"]) for r in rows(sessions, "workload", period=Period.MONTH)
            if r["period"] == "2026-01"] == [("县医院诊断医师", 1)]  # fmt: skip
    feb = {r["label"]: r["signed"] for r in rows(sessions, "workload", period=Period.MONTH)
           if r["period"] == "2026-02"}  # fmt: skip
    assert feb == {"县医院诊断医师": 3, "省医院诊断医师": 1}
    assert work  # buckets exist

    with sessions() as session:
        from sqlalchemy import select

        from remote_dx.core.models import Institution

        county_id = session.scalar(select(Institution.id).where(Institution.code == "XXXRMYY"))
        tree = network(session, StatsQuery(period=None))
    assert county_id is not None
    scoped = rows(sessions, "volumes", period=None, pool_id=county_id)
    assert (scoped[0]["received"], scoped[0]["read"]) == (4, 4)
    (root,) = tree["roots"]
    assert root["code"] == "HNSRMYY" and root["value"] == 7


def test_facts_follow_the_workflow_after_a_refresh(
    stats_db: tuple[sessionmaker[Session], Scenario], settings: Settings
) -> None:
    """The per-study fact rows the figures read (stats/facts.py) follow later workflow steps:
    on PostgreSQL through the triggers' dirty marks (only marked studies are recomputed), on
    SQLite by the rebuild. After each refresh every row equals its definition."""
    from datetime import timedelta

    import numpy as np
    from sqlalchemy import select

    from remote_dx import pipeline
    from remote_dx.core import clock
    from remote_dx.core.models import Device, StudyFact, User
    from remote_dx.ecg.model import PatientInfo
    from remote_dx.ingest.instance import Sender, file_instance
    from remote_dx.ingest.study import sweep_ready_studies
    from remote_dx.reporting.keys import load_signing_key
    from remote_dx.reporting.schemas import ReportContent
    from remote_dx.reporting.signing import sign
    from remote_dx.simulate.exams import dx_part10
    from remote_dx.stats import facts
    from remote_dx.storage.factory import get_store
    from remote_dx.worklist.lease import claim
    from tests.test_stats_scenario import at, sh

    sessions, _ = stats_db

    def stored_equals_definition() -> int:
        with sessions() as session:
            facts.refresh(session)
            stored = {tuple(r) for r in session.execute(select(*StudyFact.__table__.c)).all()}
            derived = {tuple(r) for r in session.execute(facts.select_facts()).all()}
        assert stored == derived
        return len(stored)

    assert stored_equals_definition() == 7
    march = rows(sessions, "volumes", period=Period.MONTH)
    assert [r["period"] for r in march] == ["2026-01", "2026-02"]

    # A new study H (西坪 DX, 03-05 09:00 Shanghai), claimed 09:30 and signed 09:50, positive.
    uid = "1.2.826.0.1.3680043.10.1999.72"
    when = sh(3, 5, 9)
    at(when)
    store = get_store(settings)
    with sessions() as session:
        device = session.scalar(select(Device).where(Device.ae_title == "XIPING_DR"))
        assert device is not None
        _ = device.institution
        sender = Sender.of(device)
        reader = session.scalar(select(User).where(User.username == "county_reader"))
        assert reader is not None
        session.expunge(reader)
    data = dx_part10(np.random.default_rng(8), study_uid=uid, acquired_at=when, institution="T",
                     patient=PatientInfo(patient_id="P-H", name="TEST^H", sex="F",
                                         birth_date="19700101"))  # fmt: skip
    file_instance(data, store=store, sessions=sessions, sender=sender)
    processed = when + timedelta(seconds=settings.quiet_seconds + 1)
    at(processed)
    assert uid in sweep_ready_studies(sessions, quiet_seconds=settings.quiet_seconds)
    assert pipeline.process_study(uid, sessions=sessions, store=store, now=processed).result == (
        "processed"
    )
    # Received, not yet read: the refresh must see the new study before it is read.
    march = by_period(rows(sessions, "volumes", period=Period.MONTH))
    assert (march["2026-03"]["received"], march["2026-03"]["read"]) == (1, 0)
    at(sh(3, 5, 9, 30))
    with sessions() as session:
        claim(session, reader, uid, lease=timedelta(minutes=30), now=sh(3, 5, 9, 30))
    at(sh(3, 5, 9, 50))
    with sessions() as session:
        sign(session, reader, uid, key=load_signing_key(settings), now=sh(3, 5, 9, 50),
             content=ReportContent(findings="所见", impression="意见", positive=True))  # fmt: skip
        session.commit()
    clock.reset()
    assert stored_equals_definition() == 8
    march = by_period(rows(sessions, "volumes", period=Period.MONTH))["2026-03"]
    assert (march["received"], march["read"], march["positive"]) == (1, 1, 1)
    tat = by_period(rows(sessions, "turnaround", period=Period.MONTH))["2026-03"]
    assert tat["tat_median_min"] == pytest.approx(50.0, abs=0.05)
    assert tat["claim_sign_median_min"] == pytest.approx(20.0, abs=0.05)
    assert tat["sla_met"] == 1
