"""Audit appends on PostgreSQL: the database's one-call append against the session path.

    python bench/audit_append.py [--records 3000] [--threads 1,8] [--rounds 3]

Every audited request appends a record to the hash chain, and every writer of every API
process queues on the chain head's row lock from its bump to its commit. The peer is the
same append through a SQLAlchemy session (:func:`remote_dx.core.audit._append_batch_session`:
bump, insert, new head hash and commit, one round trip each); ours is one call of the
database's ``audit_chain_append`` in autocommit, which links the records under the head's lock
inside PostgreSQL (:func:`remote_dx.core.audit._append_batch_psycopg`).

``--threads`` writers of one process append ``--records`` records in all, as request threads
do (concurrent ones share a batch). Both paths run in the same database, alternating for
``--rounds`` rounds, and the chain is verified at the end. Prints records/s and the writer
process's CPU per record (user + system: what the API processes pay), median over the rounds,
and the ratios. PostgreSQL: ``RDX_BENCH_POSTGRES_URL`` (default the local server).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy.orm import sessionmaker  # noqa: E402

from bench.receiver import PostgresDatabase, postgres_unavailable  # noqa: E402
from remote_dx.api.audit import audit_sessions  # noqa: E402
from remote_dx.core import audit as chain  # noqa: E402
from remote_dx.core.db import dispose_engines  # noqa: E402
from remote_dx.core.migrate import upgrade  # noqa: E402
from remote_dx.core.settings import Settings  # noqa: E402

PATHS = {
    "session (peer)": chain._append_batch_session,
    "one call in the database": chain._append_batch,  # psycopg, else the session path
}


def study_view(n: int) -> chain.AuditEvent:
    """The record a reader's study view writes (api/audit.py), for study ``n``."""
    return chain.AuditEvent(
        action="view",
        user_id=3,
        username="county_reader",
        role="reader",
        institution="XXXRMYY",
        patient=f"XP{n:08d}^^^XIPING",
        object_type="study",
        object_id=f"1.2.826.0.1.3680043.8.498.{n}",
        client_address="10.12.0.31",
        method="GET",
        path=f"/api/v1/studies/1.2.826.0.1.3680043.8.498.{n}",
        status_code=200,
        detail={"route": "/api/v1/studies/{study_uid}", "covers_reads_for_seconds": 300},
    )


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(sessions: sessionmaker, records: int, threads: int) -> tuple[float, float]:
    """(records/s, CPU µs per record) of ``threads`` writers appending ``records`` in all."""
    each = records // threads

    def writer(first: int) -> None:
        for n in range(first, first + each):
            chain.append(sessions, study_view(n))

    workers = [threading.Thread(target=writer, args=(k * each,)) for k in range(threads)]
    cpu, began = cpu_seconds(), time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed, cpu = time.perf_counter() - began, cpu_seconds() - cpu
    return each * threads / elapsed, 1e6 * cpu / (each * threads)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=3000)
    parser.add_argument("--threads", default="1,8", help="writer threads, e.g. 1,8")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if reason := postgres_unavailable():
        print(f"skipped: {reason}")
        return 0
    database = PostgresDatabase()
    database.create()
    try:
        settings = Settings(data_dir=ROOT / "var" / "bench-audit", database_url=database.url)
        upgrade(settings)
        sessions = audit_sessions(settings.resolved_database_url)  # the API's own audit engine
        chain.append(sessions, study_view(0))  # connect, prepare
        original = chain._append_batch
        print(f"audit appends, {args.records} records per figure, median of {args.rounds} rounds")
        for threads in (int(t) for t in args.threads.split(",")):
            figures: dict[str, list[tuple[float, float]]] = {name: [] for name in PATHS}
            for _ in range(args.rounds):
                for name, path in PATHS.items():
                    chain._append_batch = path
                    try:
                        figures[name].append(measure(sessions, args.records, threads))
                    finally:
                        chain._append_batch = original
            medians = {
                name: (
                    statistics.median(rate for rate, _ in runs),
                    statistics.median(cpu for _, cpu in runs),
                )
                for name, runs in figures.items()
            }
            for name, (rate, cpu) in medians.items():
                print(
                    f"  {threads} writer thread(s), {name:24}: {rate:7.0f} records/s, "
                    f"{cpu:5.0f} µs CPU per record"
                )
            (peer_rate, peer_cpu), (our_rate, our_cpu) = medians.values()
            print(
                f"  {threads} writer thread(s), ratio: {our_rate / peer_rate:.2f}× the records/s, "
                f"{our_cpu / peer_cpu:.2f}× the CPU per record"
            )
        with sessions() as session:
            check = chain.verify_chain(session)
        print(f"chain verified: {check.ok}, {check.records} records")
        return 0 if check.ok else 1
    finally:
        dispose_engines()
        database.drop()


if __name__ == "__main__":
    raise SystemExit(main())
