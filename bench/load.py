"""Load: the reading endpoints under 50 concurrent clients over 100,000 studies on PostgreSQL.

    python bench/load.py [--studies 100000] [--clients 50] [--seconds 20] [--api-processes 2]
    python bench/load.py --keep-dir DIR ...   # generate once into DIR and keep it
    python bench/load.py --reuse DIR ...      # start DIR's cluster, migrate, measure (~1 min)

Generation goes through the real ingest door (``file_instance``: parse, object store, index)
with one small instance per study from the demo network's devices, in a throw-away PostgreSQL
cluster (``initdb``/``pg_ctl``, max_connections 400; ``--no-private-postgres`` uses
``RDX_BENCH_POSTGRES_URL``'s server) and a FileStore under a temporary folder; the generation
time is printed. Routing is then applied in bulk SQL, as the worker would leave it
(processed, one worklist item per study: county pool mostly, the province for one in ten, STAT /
URGENT / ROUTINE, some claimed), so the worklist has the size of a busy year.

``remote-dx api`` runs as ``--api-processes`` processes (a load balancer's view: clients take
turns), and ``--clients`` asyncio clients, each with its own login, loop for ``--seconds`` per
endpoint:

- worklist page — ``GET /api/v1/worklist?limit=50`` (STAT first, then due time; target p99 ≤ 50 ms)
- study — ``GET /api/v1/studies/{uid}`` of a random visible study (target p99 ≤ 100 ms)
- QIDO-RS — ``GET /dicom-web/studies?PatientID=…`` (skipped with a message where the DICOMweb
  router has no QIDO)

Prints per endpoint: requests, errors, throughput, p50/p95/p99/max, and the target verdict.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402
from sqlalchemy import select, text  # noqa: E402

from bench.receiver import PostgresDatabase, postgres_unavailable, remote_dx_command  # noqa: E402

DEVICES = ("XIPING_DR", "DINGHE_DR", "XIPING_ECG")
READER = "county_reader"
TARGETS = {"worklist": 0.050, "study": 0.100}
WORKLIST = "/api/v1/worklist?limit=50"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def small_instance(n: int, modality: str) -> bytes:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = modality
    ds.PatientName = f"患者^{n:06d}"
    ds.PatientID = f"L{n % 40000:06d}"  # patients with several studies, as in life
    ds.PatientSex = "MF"[n % 2]
    ds.StudyDate = f"2026{1 + n % 12:02d}{1 + n % 28:02d}"
    ds.StudyDescription = "胸部正位" if modality == "DX" else "常规心电图"
    ds.AccessionNumber = f"A{n:08d}"
    ds.InstanceNumber = 1
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def generate(settings, count: int, threads: int = 8) -> float:
    """File ``count`` one-instance studies through ``file_instance``; seconds taken."""
    from remote_dx.core.db import get_sessionmaker
    from remote_dx.core.models import Device
    from remote_dx.ingest.instance import Sender, file_instance
    from remote_dx.storage.factory import get_store

    sessions = get_sessionmaker(settings)
    store = get_store(settings)
    with sessions() as session:
        senders = [
            Sender.of(session.scalar(select(Device).where(Device.ae_title == ae))) for ae in DEVICES
        ]

    def one(n: int) -> None:
        sender = senders[n % len(senders)]
        modality = "ECG" if sender.ae_title.endswith("ECG") else "DX"
        file_instance(small_instance(n, modality), store=store, sessions=sessions, sender=sender)

    began = time.perf_counter()
    done = 0
    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(one, range(count), chunksize=64):
            done += 1
            if done % 10_000 == 0:
                rate = done / (time.perf_counter() - began)
                print(f"  filed {done}/{count} ({rate:.0f}/s)", flush=True)
    return time.perf_counter() - began


ROUTE_SQL = """
INSERT INTO worklist_items (study_pk, pool_id, priority, status, routed_at, due_at,
                            routing_rule, escalation_level, second_signature_required, version)
SELECT s.id,
       CASE WHEN s.id % 10 = 0 THEN :province ELSE :county END,
       CASE WHEN s.id % 20 = 0 THEN 'stat' WHEN s.id % 5 = 0 THEN 'urgent' ELSE 'routine' END,
       CASE WHEN s.id % 7 = 0 THEN 'signed' ELSE 'unread' END,
       s.received_at,
       s.received_at + (s.id % 48) * interval '1 hour',
       'load', 0, false, 0
FROM studies s
WHERE NOT EXISTS (SELECT 1 FROM worklist_items w WHERE w.study_pk = s.id)
"""


def route_all(settings) -> float:
    from remote_dx.core.db import get_sessionmaker
    from remote_dx.core.models import Institution

    began = time.perf_counter()
    with get_sessionmaker(settings)() as session, session.begin():
        county = session.scalar(select(Institution.id).where(Institution.code == "XXXRMYY"))
        province = session.scalar(select(Institution.id).where(Institution.code == "HNSRMYY"))
        session.execute(
            text("UPDATE studies SET status = 'processed', processed_at = last_received_at")
        )
        session.execute(text(ROUTE_SQL), {"county": county, "province": province})
    vacuum_analyze(settings)
    return time.perf_counter() - began


def vacuum_analyze(settings) -> None:
    """What autovacuum does after a bulk load: planner statistics and the visibility map (index-
    only scans). In autocommit: a ``COMMIT`` + ``ANALYZE`` on a session's connection ran inside
    a new transaction that the connection's close rolled back, leaving the planner blind."""
    from remote_dx.core.db import get_engine

    with get_engine(settings).execution_options(isolation_level="AUTOCOMMIT").connect() as conn:
        conn.execute(text("VACUUM ANALYZE"))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def drive(
    name: str, bases: list[str], tokens: list[str], make_path, seconds: float
) -> dict[str, float]:
    latencies: list[float] = []
    errors: dict[int | str, int] = {}
    stop = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=len(tokens) * 2)

    async def client(index: int) -> None:
        rng = random.Random(index)
        async with httpx.AsyncClient(
            base_url=bases[index % len(bases)],
            headers={"Authorization": f"Bearer {tokens[index]}"},
            timeout=30,
            limits=limits,
        ) as http:
            while time.monotonic() < stop:
                path = make_path(rng)
                began = time.perf_counter()
                try:
                    response = await http.get(path)
                    code: int | str = response.status_code
                except httpx.HTTPError as exc:
                    code = type(exc).__name__
                latencies.append(time.perf_counter() - began)
                if code != 200:
                    errors[code] = errors.get(code, 0) + 1

    began = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(len(tokens))))
    elapsed = time.perf_counter() - began
    result = {
        "requests": len(latencies),
        "errors": sum(errors.values()),
        "rps": len(latencies) / elapsed,
        "p50": statistics.median(latencies),
        "p95": percentile(latencies, 0.95),
        "p99": percentile(latencies, 0.99),
        "max": max(latencies),
    }
    target = TARGETS.get(name)
    verdict = ""
    if target is not None:
        verdict = f"  target p99 ≤ {target * 1000:.0f} ms: " + (
            "met" if result["p99"] <= target else "NOT met"
        )
    print(
        f"{name:9} {result['requests']:6d} requests, {result['errors']} errors "
        f"{dict(errors) if errors else ''}, {result['rps']:.0f} req/s; p50 "
        f"{result['p50'] * 1000:.1f} ms, p95 {result['p95'] * 1000:.1f} ms, p99 "
        f"{result['p99'] * 1000:.1f} ms, max {result['max'] * 1000:.0f} ms{verdict}",
        flush=True,
    )
    return result


def run(
    studies: int = 100_000,
    clients: int = 50,
    seconds: float = 20.0,
    api_processes: int = 2,
    keep: bool = False,
    private_postgres: bool = True,
    keep_dir: Path | None = None,
    reuse_dir: Path | None = None,
) -> dict[str, dict[str, float]]:
    from remote_dx.core.db import dispose_engines, get_sessionmaker, session_scope
    from remote_dx.core.migrate import upgrade
    from remote_dx.core.network import apply_network, load_network_file
    from remote_dx.core.settings import Settings

    private = None
    saved = keep_dir or reuse_dir
    if saved is not None:
        # A generated cluster kept between runs: DIR/pg (the cluster), DIR/hub (the FileStore),
        # DIR/database (the database's name); generation (~10 min for 100,000) is paid once.
        keep = True
        private_postgres = True
        saved.mkdir(parents=True, exist_ok=True)
    if private_postgres:
        # A cluster of our own: other users of a shared server would skew the figures (and
        # each API process may hold 10 + 10 request and 2 + 2 audit connections).
        from bench.soak import Postgres

        root = saved / "pg" if saved else Path(tempfile.mkdtemp(prefix="rdx-load-pg-"))
        private = Postgres(root, max_connections=400)
        if reuse_dir is None:
            private.init()
        private.start()
        database = PostgresDatabase(private.url)
    else:
        why = postgres_unavailable()
        if why:
            raise SystemExit(f"PostgreSQL needed: {why}")
        database = PostgresDatabase()
    if reuse_dir is not None:
        database.name = (reuse_dir / "database").read_text().strip()
    else:
        database.create()
        if saved is not None:
            (saved / "database").write_text(database.name)
    work = saved if saved else Path(tempfile.mkdtemp(prefix="rdx-load-"))
    processes: list[subprocess.Popen[bytes]] = []
    try:
        settings = Settings(
            data_dir=work / "hub",
            database_url=database.url,
            jwt_secret="load-secret-0123456789abcdef0123456789",
            log_level="WARNING",
            http_host="127.0.0.1",
        )
        upgrade(settings)  # on reuse: the migrations added since the cluster was generated
        if reuse_dir is None:
            with session_scope(settings) as session:
                apply_network(
                    session,
                    load_network_file(ROOT / "sample_studies" / "demo_network.yaml"),
                    with_passwords=True,
                )
            print(f"generating {studies} studies through file_instance (PostgreSQL, FileStore)")
            seconds_taken = generate(settings, studies)
            print(f"generation: {studies} studies in {seconds_taken:.1f} s "
                  f"({studies / seconds_taken:.0f}/s)")  # fmt: skip
            print(f"routing in bulk SQL + VACUUM ANALYZE: {route_all(settings):.1f} s")
        else:
            with get_sessionmaker(settings)() as session:
                count = session.scalar(text("SELECT count(*) FROM studies"))
            vacuum_analyze(settings)
            print(f"reusing {reuse_dir}: {count} studies (generation skipped)")
        dispose_engines()

        env = {k: v for k, v in os.environ.items() if not k.startswith("RDX_")}
        env.update(
            RDX_DATA_DIR=str(settings.data_dir),
            RDX_DATABASE_URL=database.url,
            RDX_JWT_SECRET=settings.jwt_secret,
            RDX_LOG_LEVEL="WARNING",
            RDX_HTTP_HOST="127.0.0.1",
            RDX_LOGIN_MAX_FAILURES="1000",
            RDX_LOGIN_MAX_FAILURES_PER_ADDRESS="100000",
        )
        ports = [free_port() for _ in range(api_processes)]
        for port in ports:
            log = (work / f"api-{port}.log").open("wb")
            processes.append(
                subprocess.Popen(
                    [*remote_dx_command(), "api", "--http-port", str(port)],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        bases = [f"http://127.0.0.1:{port}" for port in ports]
        deadline = time.monotonic() + 90
        for base in bases:
            while True:
                try:
                    if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit(f"remote-dx api did not start; see {work}")
                time.sleep(0.3)

        tokens = []
        for index in range(clients):
            answer = httpx.post(
                f"{bases[index % len(bases)]}/api/v1/auth/token",
                data={"username": READER, "password": "demo"},
                timeout=30,
            )
            answer.raise_for_status()
            tokens.append(answer.json()["access_token"])

        from remote_dx.core.models import Patient, Study, WorklistItem

        with get_sessionmaker(settings)() as session:
            visible = list(
                session.execute(
                    select(Study.study_uid, Patient.patient_id)
                    .join(WorklistItem, WorklistItem.study_pk == Study.id)
                    .join(Patient, Patient.id == Study.patient_pk)
                    .where(Study.id % 10 != 0)
                    .limit(20_000)
                ).all()
            )
        uids = [row[0] for row in visible]
        patients = [row[1] for row in visible]
        probe = httpx.get(
            f"{bases[0]}/dicom-web/studies",
            params={"PatientID": patients[0]},
            headers={"Authorization": f"Bearer {tokens[0]}"},
            timeout=30,
        )
        results = {}
        # One client first: what a request costs without queueing (the 50-client figures add
        # the wait for a CPU and a connection on top of it).
        print(f"baseline: 1 client, {min(seconds, 5.0):.0f} s each:")
        one = tokens[:1]
        asyncio.run(drive("worklist", bases, one, lambda rng: WORKLIST, min(seconds, 5.0)))
        asyncio.run(
            drive(
                "study",
                bases,
                one,
                lambda rng: f"/api/v1/studies/{rng.choice(uids)}",
                min(seconds, 5.0),
            )
        )
        print(f"{clients} clients over {api_processes} API processes, {seconds:.0f} s each:")
        results["worklist"] = asyncio.run(
            drive("worklist", bases, tokens, lambda rng: WORKLIST, seconds)
        )
        results["study"] = asyncio.run(
            drive(
                "study", bases, tokens, lambda rng: f"/api/v1/studies/{rng.choice(uids)}", seconds
            )
        )
        if probe.status_code in (404, 405):
            print("QIDO-RS: /dicom-web/studies is not in this build; skipped")
        else:
            results["qido"] = asyncio.run(
                drive(
                    "qido",
                    bases,
                    tokens,
                    lambda rng: f"/dicom-web/studies?PatientID={rng.choice(patients)}",
                    seconds,
                )
            )
        return results
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        from remote_dx.core.db import dispose_engines as dispose

        dispose()
        if not keep:
            database.drop()
            shutil.rmtree(work, ignore_errors=True)
        if private is not None:
            private.stop("fast")
            if not keep:
                shutil.rmtree(private.root, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--api-processes", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="keep the database and folder")
    parser.add_argument(
        "--keep-dir", type=Path, help="generate into DIR (cluster, files) and keep it for --reuse"
    )
    parser.add_argument(
        "--reuse", type=Path, metavar="DIR", help="skip generation: the cluster --keep-dir left"
    )
    parser.add_argument(
        "--private-postgres",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="a throw-away cluster (initdb/pg_ctl) instead of RDX_BENCH_POSTGRES_URL's server",
    )
    args = parser.parse_args()
    results = run(
        args.studies, args.clients, args.seconds, args.api_processes, args.keep,
        args.private_postgres, args.keep_dir, args.reuse,
    )  # fmt: skip
    errors = sum(r["errors"] for r in results.values())
    met = all(results[name]["p99"] <= target for name, target in TARGETS.items())
    print(f"errors {errors}; latency targets {'met' if met else 'NOT met'}")
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
