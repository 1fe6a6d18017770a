"""``remote-dx simulate``: a small scenario through the real ingest and workflow, whose figures
the statistics then read back (the dashboards come alive), and the command line."""

from __future__ import annotations

from datetime import date

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from remote_dx.cli import app
from remote_dx.core.clock import SHANGHAI
from remote_dx.core.models import Instance, Report, RoutingDecision, Study, WorklistItem
from remote_dx.core.settings import Settings
from remote_dx.simulate import HOUR_WEIGHTS, Rates, simulate
from remote_dx.simulate.engine import Simulator
from remote_dx.stats.queries import Dimension, StatsQuery, table
from remote_dx.storage.factory import get_store


def test_small_county_through_the_real_workflow(
    settings: Settings, db: sessionmaker[Session]
) -> None:
    report = simulate(
        settings, db, get_store(settings), county="测试县", start=date(2026, 3, 2), days=3,
        seed=11, townships=3, scale=0.08,
    )  # fmt: skip
    assert report.studies >= 5
    assert report.ms_per_study > 0 and "ms per study" in report.summary()
    with db() as session:
        studies = session.scalar(select(func.count(Study.id)).where(Study.origin_id.is_not(None)))
        # Every exam was filed as a real instance and routed to a worklist.
        assert session.scalar(select(func.count(Instance.id))) == studies == report.studies
        assert session.scalar(select(func.count(WorklistItem.id))) == report.studies
        assert session.scalar(select(func.count(RoutingDecision.id))) >= report.studies
        signed = session.scalar(select(func.count(Report.id)).where(Report.status == "final"))
        assert signed == report.counts["signed"] > 0
        volumes = table(session, "volumes", StatsQuery(period=None)).rows[0]
        assert volumes["received"] == report.studies and volumes["read"] == signed
        towns = table(session, "volumes", StatsQuery(period=None, by=Dimension.TOWNSHIP)).rows
        assert sum(r["received"] for r in towns) == report.studies
        assert all(r["label"].endswith("卫生院") for r in towns)
        days = table(session, "volumes", StatsQuery(period=None, start=date(2026, 3, 2),
                                                    end=date(2026, 3, 4))).rows  # fmt: skip
        assert days[0]["received"] == report.studies  # all arrivals inside the 3 Shanghai days


def test_plan_follows_volumes_and_hour_pattern(
    settings: Settings, db: sessionmaker[Session]
) -> None:
    sim = Simulator(
        settings, db, get_store(settings), county="规划县", start=date(2026, 1, 1), days=365,
        seed=5, rates=Rates(),
    )  # fmt: skip
    cases = sim._plan()  # the plan only: no study is filed
    ecg = sum(c.kind == "ecg" for c in cases)
    imaging = len(cases) - ecg
    assert 15_000 < ecg < 17_000 and 5_800 < imaging < 6_800  # ≈ 16,000 + 6,300 a year
    hours = [0] * 24
    for c in cases:
        hours[c.at.astimezone(SHANGHAI).hour] += 1
    peak = max(range(24), key=hours.__getitem__)
    assert HOUR_WEIGHTS[peak] == max(HOUR_WEIGHTS) and hours[3] < hours[peak] / 10
    critical = sum(c.critical for c in cases) / ecg
    assert 0.01 < critical < 0.02


def test_cli_simulate(settings: Settings) -> None:
    result = CliRunner().invoke(
        app,
        ["simulate", "--county", "命令县", "--days", "1", "--start", "2026-03-03", "--scale",
         "0.05", "--townships", "2", "--data-dir", str(settings.data_dir)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "ms per study" in result.output
    bad = CliRunner().invoke(app, ["simulate", "--county", "x", "--start", "March"])
    assert bad.exit_code != 0
