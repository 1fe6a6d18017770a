"""Dashboard query latency on PostgreSQL (issue 6): every statistics table × the dashboard's
period/dimension views, p50 and p95 over repeated runs, against the 300 ms target.

The data are made by the simulator through the real ingest and workflow code
(:mod:`remote_dx.simulate`), ``--counties`` counties × ``--days`` days at ``--scale`` of a
county's yearly volume (1.0 ≈ 22,300 studies per county-year; 10 counties × 1 year ≈ 220,000).
The full-workflow simulation costs ~0.25 s per study on this machine (ECG analysis dominates),
so the scale actually used is printed with the figures.

    .venv/bin/python bench/stats.py --counties 10 --days 365 --scale 0.001 --amplify 904
    .venv/bin/python bench/stats.py --keep rdx_bench_stats --skip-simulate   # re-measure only

``--amplify N`` is for query plans at the issue's volume when simulating it is out of reach: after
the simulation the study-level rows (studies, worklist items, reports, routing decisions,
critical alerts, ECG analyses, re-acquire notices, recognition uses) are copied N − 1 times by
``INSERT … SELECT … CROSS JOIN generate_series`` with shifted keys and new UIDs — the same
distribution of times, townships, pools and outcomes, N times over. The output says how many
rows are copies. A database already holding copies is not amplified again. The statistics' fact
rows (:mod:`remote_dx.stats.facts`) for the new or copied studies are built once before the
timed runs, and that build is timed apart.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import psycopg
from sqlalchemy import func, inspect, select, text
from sqlalchemy.engine import Connection

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from remote_dx.core.db import get_engine, get_sessionmaker  # noqa: E402
from remote_dx.core.migrate import upgrade  # noqa: E402
from remote_dx.core.models import Study  # noqa: E402
from remote_dx.core.settings import Settings, reset_settings  # noqa: E402
from remote_dx.simulate import simulate  # noqa: E402
from remote_dx.stats import facts  # noqa: E402
from remote_dx.stats.queries import TABLES, Dimension, StatsQuery, network, table  # noqa: E402
from remote_dx.stats.sql import Period  # noqa: E402
from remote_dx.storage.factory import get_store  # noqa: E402

TARGET_MS = 300.0
COUNTIES = ("西峡县", "内乡县", "淅川县", "镇平县", "南召县", "方城县", "社旗县", "唐河县",
            "新野县", "桐柏县", "邓州市", "卧龙区")  # fmt: skip
# The views the dashboard page asks for (viewer/src/dashboard): trends by month and by day,
# per-township bars, per-reader workload, the whole range.
VIEWS = (
    ("month", StatsQuery(period=Period.MONTH)),
    ("day", StatsQuery(period=Period.DAY)),
    ("township", StatsQuery(period=None, by=Dimension.TOWNSHIP)),
    ("county×month", StatsQuery(period=Period.MONTH, by=Dimension.COUNTY)),
    ("reader", StatsQuery(period=None, by=Dimension.READER)),
)


# table → {column: SQL expression over the original row}; "{k}" is the copy number and
# "{off[table]}" that table's key offset. Columns not named are copied as they are.
COPIES: dict[str, dict[str, str]] = {
    "studies": {"id": "id + {k} * {off[studies]}",
                "study_uid": "'2.25.' || (id + {k} * {off[studies]})"},
    "worklist_items": {"id": "id + {k} * {off[worklist_items]}",
                       "study_pk": "study_pk + {k} * {off[studies]}"},
    "reports": {"id": "id + {k} * {off[reports]}", "study_pk": "study_pk + {k} * {off[studies]}",
                "verify_code": "NULL"},
    "routing_decisions": {"id": "id + {k} * {off[routing_decisions]}",
                          "study_pk": "study_pk + {k} * {off[studies]}"},
    "critical_alerts": {"id": "id + {k} * {off[critical_alerts]}",
                        "study_pk": "study_pk + {k} * {off[studies]}"},
    "ecg_analyses": {"id": "id + {k} * {off[ecg_analyses]}",
                     "study_pk": "study_pk + {k} * {off[studies]}"},
    "reacquire_requests": {"id": "id + {k} * {off[reacquire_requests]}",
                           "study_pk": "study_pk + {k} * {off[studies]}"},
    "recognition_uses": {"id": "id + {k} * {off[recognition_uses]}",
                         "study_pk": "study_pk + {k} * {off[studies]}",
                         "report_id": "report_id + {k} * {off[reports]}"},
}  # fmt: skip


def amplify(conn: Connection, factor: int) -> None:
    """Copy the study-level rows ``factor - 1`` times (see the module docstring): one
    ``INSERT … SELECT … CROSS JOIN generate_series`` per table, with the fact triggers off for
    the copy (``session_replication_role = replica``) and every study then marked stale once,
    so the first statistics refresh builds the fact rows in one pass."""
    off = {
        name: int(conn.execute(text(f"SELECT coalesce(max(id), 0) + 1 FROM {name}")).scalar_one())
        for name in COPIES
    }
    columns = {name: [c["name"] for c in inspect(conn).get_columns(name)] for name in COPIES}
    conn.execute(text("SET LOCAL session_replication_role = replica"))
    for name, changes in COPIES.items():
        cols = columns[name]
        exprs = [changes.get(c, c).format(k="k", off=off) for c in cols]
        conn.execute(
            text(
                f"INSERT INTO {name} ({', '.join(cols)}) SELECT {', '.join(exprs)} "
                f"FROM {name} CROSS JOIN generate_series(1, {factor - 1}) AS k "
                f"WHERE id < {off[name]}"
            )
        )
    conn.execute(text("SET LOCAL session_replication_role = origin"))
    for name in COPIES:
        conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), "
                          f"(SELECT max(id) FROM {name}))"))  # fmt: skip
    conn.execute(
        text(
            "INSERT INTO study_facts_dirty (study_pk) SELECT id FROM studies ON CONFLICT DO NOTHING"
        )
    )
    conn.execute(text("ANALYZE"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--keep", default="rdx_bench_stats", help="database name (kept)")
    parser.add_argument("--counties", type=int, default=10)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--scale", type=float, default=0.005)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--skip-simulate", action="store_true")
    parser.add_argument("--amplify", type=int, default=1, help="SQL copies ×N after simulating")
    args = parser.parse_args()

    admin = args.server.replace("postgresql+psycopg://", "postgresql://")
    url = args.server.rsplit("/", 1)[0] + "/" + args.keep
    if not args.skip_simulate:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{args.keep}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{args.keep}"')
    data_dir = Path(tempfile.mkdtemp(prefix="rdx-bench-stats-"))
    settings = Settings(data_dir=data_dir, database_url=url, quiet_seconds=2.0,
                        jwt_secret="bench-secret-0123456789-0123456789")  # fmt: skip
    reset_settings()
    upgrade(settings)
    sessions, store = get_sessionmaker(settings), get_store(settings)
    if not args.skip_simulate:
        started = time.perf_counter()
        for index in range(args.counties):
            report = simulate(
                settings, sessions, store, county=COUNTIES[index % len(COUNTIES)],
                code=f"B{index:02d}", start=date(2026, 1, 1), days=args.days, seed=100 + index,
                scale=args.scale,
            )  # fmt: skip
            print(report.summary(), flush=True)
        elapsed = time.perf_counter() - started
        print(f"simulated in {elapsed:.0f} s")
    if args.amplify > 1:
        with sessions() as session:
            copied = session.scalar(
                select(func.count(Study.id)).where(Study.study_uid.like("2.25.%"))
            )
        if copied:
            print(f"not amplified again: the database already holds {copied} copies")
        else:
            started = time.perf_counter()
            with get_engine(settings).begin() as conn:
                amplify(conn, args.amplify)
            print(f"copied ×{args.amplify} in {time.perf_counter() - started:.0f} s")
    # The statistics refresh their fact rows first (stats/facts.py); the stale ones after a
    # simulation or a copy are all of them, so that one-time build is timed apart.
    started = time.perf_counter()
    with sessions() as session:
        rebuilt = facts.refresh(session)
    with get_engine(settings).begin() as conn:
        conn.execute(text("ANALYZE study_facts"))
    print(f"study facts refreshed: {rebuilt} studies in {time.perf_counter() - started:.1f} s")
    with sessions() as session:
        studies = session.scalar(select(func.count(Study.id))) or 0
        # Copies carry UIDs of the form 2.25.<key> (see COPIES); the simulator's do not.
        copies = (
            session.scalar(select(func.count(Study.id)).where(Study.study_uid.like("2.25.%"))) or 0
        )
        simulated = studies - copies
    full = 22_300 * args.counties * args.days / 365
    print(
        f"\nscale used: {studies} studies = {100 * studies / full:.2f} % of {args.counties} "
        f"counties × {args.days} days at full volume ({full:,.0f}); {simulated} of them "
        f"simulated through the real workflow, {studies - simulated} SQL copies of those; "
        f"PostgreSQL, {args.repeat} runs per query after one warm-up\n"
    )
    print(f"load average before (1/5/15 min): {' / '.join(f'{v:.1f}' for v in os.getloadavg())}")
    print(f"{'table':<12} {'view':<14} {'rows':>5} {'p50 ms':>8} {'p95 ms':>8}  target ≤ 300 ms")
    worst = 0.0
    with sessions() as session:
        cases = [(name, view, query) for name in TABLES for view, query in VIEWS]
        cases.append(("network", "tree", StatsQuery(period=None)))
        for name, view, query in cases:

            def run(name: str = name, query: StatsQuery = query) -> int:
                if name == "network":
                    return len(network(session, query)["roots"])
                return len(table(session, name, query).rows)

            rows = run()
            times = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                run()
                times.append(1000 * (time.perf_counter() - t0))
            times.sort()
            p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
            worst = max(worst, p95)
            verdict = "ok" if p95 <= TARGET_MS else "OVER"
            print(f"{name:<12} {view:<14} {rows:>5} {statistics.median(times):>8.1f} "
                  f"{p95:>8.1f}  {verdict}")  # fmt: skip
    load = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"load average during the run (1/5/15 min, {os.cpu_count()} cores): {load}")
    print(f"\nworst p95 {worst:.1f} ms: {'TARGET MET' if worst <= TARGET_MS else 'TARGET MISSED'} "
          f"at this scale ({studies} studies)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
