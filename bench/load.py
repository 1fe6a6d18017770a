"""Load: the reading endpoints under 50 concurrent clients over 100,000 studies on PostgreSQL.

    python bench/load.py [--studies 100000] [--clients 50] [--seconds 20] [--api-processes 2]
                         [--think 1.0] [--reader-seconds 30]
    python bench/load.py --keep-dir DIR ...   # generate once into DIR and keep it
    python bench/load.py --reuse DIR ...      # start DIR's cluster, migrate, measure (~1 min)
    python bench/load.py --reuse DIR --phases closed --endpoints study   # one figure, ~25 s

Generation goes through the real ingest door (``file_instance``: parse, object store, index)
with one small instance per study from the demo network's devices, in a throw-away PostgreSQL
cluster (``initdb``/``pg_ctl``, max_connections 400; ``--no-private-postgres`` uses
``RDX_BENCH_POSTGRES_URL``'s server) and a FileStore under a temporary folder; the generation
time is printed. Routing is then applied in bulk SQL, as the worker would leave it
(processed, one worklist item per study: county pool mostly, the province for one in ten, STAT /
URGENT / ROUTINE, some claimed), so the worklist has the size of a busy year.

``remote-dx api`` runs as ``--api-processes`` processes (a load balancer's view: clients take
turns). Each client has its own login and its own keep-alive connection, and is driven by a
minimal asyncio HTTP/1.1 client (one pre-built GET, status line and Content-Length parsed by
hand: 0.035 ms of CPU a request where 50 httpx clients spent 2.3 ms, measured against one
small JSON answer, on the same two cores as the server).
Endpoints:

- worklist page — ``GET /api/v1/worklist?limit=50`` (STAT first, then due time; target p99 ≤ 50 ms)
- study — ``GET /api/v1/studies/{uid}`` of a random visible study (target p99 ≤ 100 ms)
- QIDO-RS — ``GET /dicom-web/studies?PatientID=…`` (skipped with a message where the DICOMweb
  router has no QIDO)

Three phases, each endpoint in turn, clearly labelled in the output:

1. **1 client, closed loop** — what one request costs without queueing.
2. **CLOSED LOOP, ``--clients`` clients, zero think time** — each client sends its next request
   the moment an answer arrives: the saturation figure (throughput of the two cores; latency is
   then mostly time queued behind the other clients' requests).
3. **READER-LIKE, ``--clients`` clients with think time** — each client pauses between an answer
   and its next request, an exponentially distributed time of mean ``--think`` s (default 1 s).
   Why 1 s: a county reader reads a chest film in 1–3 minutes and an ECG in about 30 s, and
   touches these endpoints a few times per study (worklist refresh, open the study): one request
   every 10–30 s. Paging and filtering the worklist in a hurry is a click a second or so. A mean
   of 1 s is that hurried pace for all 50 readers at once, 10–30× their usual pace: a harsh but
   human load (≈ 50 requests/s offered per endpoint).

Prints per endpoint and phase: requests, errors, throughput, p50/p95/p99/max and the target verdict
(both modes), then the CPU per request of the API processes, of PostgreSQL (every backend,
closed ones included) and of this load generator, and the load average at the time.
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
from dataclasses import dataclass
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
PHASES = ("one", "closed", "reader")
ENDPOINTS = ("worklist", "study", "qido")
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


# -- the load generator -------------------------------------------------------------------------
#
# The clients share the server's two cores, so every microsecond they spend is taken from the
# server. httpx costs ~0.5–1 ms of CPU per request (its connection pool, header models, the
# anyio layers); this client writes one pre-built request line and parses the status line and
# Content-Length itself, on a keep-alive connection of its own (a browser tab's), ~30 µs.


class Connection:
    """One HTTP/1.1 keep-alive connection that only sends bodiless GETs."""

    def __init__(self, base: str, token: str) -> None:
        host, port = base.removeprefix("http://").rsplit(":", 1)
        self.host, self.port = host, int(port)
        self.head = (
            f"Host: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
            "Accept: application/json\r\n\r\n"
        ).encode("latin-1")
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, path: str) -> tuple[int, int]:
        """(status, body bytes); one retry on a fresh connection if a kept-alive one was shut."""
        for attempt in (0, 1):
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            try:
                return await self._exchange(path)
            except (ConnectionError, asyncio.IncompleteReadError):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    async def _exchange(self, path: str) -> tuple[int, int]:
        assert self.reader is not None and self.writer is not None
        self.writer.write(b"GET " + path.encode("latin-1") + b" HTTP/1.1\r\n" + self.head)
        header = await self.reader.readuntil(b"\r\n\r\n")
        status = int(header[9:12])
        lower = header.lower()
        at = lower.find(b"\r\ncontent-length:")
        if at >= 0:
            length = int(lower[at + 17 : lower.index(b"\r\n", at + 2)])
            await self.reader.readexactly(length)
        elif b"\r\ntransfer-encoding: chunked" in lower:
            length = 0
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                await self.reader.readexactly(size + 2)
                length += size
                if size == 0:
                    break
        else:
            raise ConnectionError("answer without a length")
        if b"\r\nconnection: close" in lower:
            self.close()
        return status, length

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def cpu_seconds(pids: list[int], *, reaped: bool = False) -> float:
    """User + system CPU seconds of these processes so far (``/proc/PID/stat``), ended ones 0;
    with ``reaped`` also that of their children that ended and were waited for (a PostgreSQL
    backend that closed is counted in its postmaster's cutime/cstime)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
        if reaped:
            total += int(fields[13]) + int(fields[14])  # cutime, cstime
    return total / tick


def postgres_pids(data_dir: Path | None) -> list[int]:
    """The private cluster's postmaster and every backend it forked."""
    if data_dir is None:
        return []
    try:
        postmaster = int((data_dir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return []
    pids = [postmaster]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == postmaster:
                pids.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return pids


@dataclass
class Meter:
    """Where the CPU went during a phase: API processes, PostgreSQL, this load generator."""

    api: list[int]
    pg_data: Path | None

    def snapshot(self) -> tuple[float, float, float]:
        postmaster, *backends = postgres_pids(self.pg_data) or [0]
        postgres = cpu_seconds(backends) + cpu_seconds([postmaster], reaped=True)
        return cpu_seconds(self.api), postgres, time.process_time()


async def drive(
    name: str,
    bases: list[str],
    tokens: list[str],
    make_path,
    seconds: float,
    *,
    think: float = 0.0,
    meter: Meter | None = None,
    target: float | None = None,
) -> dict[str, float]:
    """``len(tokens)`` clients, each on its own connection, for ``seconds``.

    ``think`` 0: closed loop, the next request as soon as the answer is in (saturation).
    Otherwise each client waits an exponentially distributed time of mean ``think`` s between
    an answer and its next request, as a person does (a random pause: the clients do not fall
    into step); the clients start spread over one mean think time.
    """
    latencies: list[float] = []
    errors: dict[int | str, int] = {}
    stop = time.monotonic() + seconds

    async def client(index: int) -> None:
        rng = random.Random(index)
        connection = Connection(bases[index % len(bases)], tokens[index])
        if think:
            await asyncio.sleep(rng.uniform(0, think))
        try:
            while time.monotonic() < stop:
                path = make_path(rng)
                began = time.perf_counter()
                try:
                    code: int | str = (await connection.get(path))[0]
                except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                    code = type(exc).__name__
                    connection.close()
                latencies.append(time.perf_counter() - began)
                if code != 200:
                    errors[code] = errors.get(code, 0) + 1
                if think:
                    await asyncio.sleep(rng.expovariate(1 / think))
        finally:
            connection.close()

    load_before = os.getloadavg()[0]
    before = meter.snapshot() if meter else None
    began = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(len(tokens))))
    elapsed = time.perf_counter() - began
    after = meter.snapshot() if meter else None
    count = max(1, len(latencies))
    result = {
        "requests": len(latencies),
        "errors": sum(errors.values()),
        "rps": len(latencies) / elapsed,
        "p50": statistics.median(latencies),
        "p95": percentile(latencies, 0.95),
        "p99": percentile(latencies, 0.99),
        "max": max(latencies),
        "load": max(load_before, os.getloadavg()[0]),
    }
    verdict = ""
    if target is not None:
        verdict = f"  target p99 ≤ {target * 1000:.0f} ms: " + (
            "met" if result["p99"] <= target else "NOT met"
        )
    print(
        f"  {name:9} {result['requests']:6d} requests, {result['errors']} errors "
        f"{dict(errors) if errors else ''}, {result['rps']:.0f} req/s; p50 "
        f"{result['p50'] * 1000:.1f} ms, p95 {result['p95'] * 1000:.1f} ms, p99 "
        f"{result['p99'] * 1000:.1f} ms, max {result['max'] * 1000:.0f} ms{verdict}",
        flush=True,
    )
    if before is not None and after is not None:
        api, pg, own = (1000 * (b - a) / count for a, b in zip(before, after, strict=True))
        result.update(api_cpu_ms=api, pg_cpu_ms=pg, client_cpu_ms=own)
        print(
            f"  {'':9} CPU per request: API {api:.2f} ms + PostgreSQL {pg:.2f} ms "
            f"(server {api + pg:.2f} ms); load generator {own:.2f} ms; "
            f"load average {result['load']:.1f}",
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
    think: float = 1.0,
    reader_seconds: float = 30.0,
    phases: tuple[str, ...] = PHASES,
    only: tuple[str, ...] = (),
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
        meter = Meter(
            api=[process.pid for process in processes],
            pg_data=private.data if private is not None else None,
        )
        endpoints = {
            "worklist": lambda rng: WORKLIST,
            "study": lambda rng: f"/api/v1/studies/{rng.choice(uids)}",
        }
        if probe.status_code in (404, 405):
            print("QIDO-RS: /dicom-web/studies is not in this build; skipped")
        else:
            endpoints["qido"] = lambda rng: f"/dicom-web/studies?PatientID={rng.choice(patients)}"
        if only:
            endpoints = {name: path for name, path in endpoints.items() if name in only}

        def phase(mode: str, heading: str, users: list[str], span: float, pause: float) -> None:
            if mode not in phases:
                return
            print(heading, flush=True)
            for name, make_path in endpoints.items():
                results[f"{mode}/{name}"] = asyncio.run(
                    drive(
                        name, bases, users, make_path, span,
                        think=pause, meter=meter, target=TARGETS.get(name),
                    )
                )  # fmt: skip

        results: dict[str, dict[str, float]] = {}
        short = min(seconds, 5.0)
        phase(
            "one",
            f"[1 client, closed loop, {short:.0f} s each] what a request costs without queueing",
            tokens[:1], short, 0.0,
        )  # fmt: skip
        phase(
            "closed",
            f"[{clients} clients, CLOSED LOOP, zero think time, {seconds:.0f} s each] saturation: "
            f"each client sends its next request the moment an answer arrives",
            tokens, seconds, 0.0,
        )  # fmt: skip
        phase(
            "reader",
            f"[{clients} clients, READER-LIKE, exponential think time of mean {think:g} s, "
            f"{reader_seconds:.0f} s each] each client pauses between an answer and its next "
            f"request, as a reader does (offered load ≈ {clients / think:.0f} req/s at most)",
            tokens, reader_seconds, think,
        )  # fmt: skip
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
    parser.add_argument(
        "--think",
        type=float,
        default=1.0,
        help="reader-like mode: mean think time in seconds between a client's requests",
    )
    parser.add_argument("--reader-seconds", type=float, default=30.0)
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
    parser.add_argument(
        "--phases",
        default=",".join(PHASES),
        help="which phases to run, of: " + ", ".join(PHASES) + " (e.g. --phases closed)",
    )
    parser.add_argument(
        "--endpoints",
        default=",".join(ENDPOINTS),
        help="which endpoints to drive, of: " + ", ".join(ENDPOINTS) + " (e.g. --endpoints study)",
    )
    args = parser.parse_args()
    phases = tuple(p.strip() for p in args.phases.split(",") if p.strip())
    if unknown := set(phases) - set(PHASES):
        parser.error(f"--phases: unknown {', '.join(sorted(unknown))}; use {', '.join(PHASES)}")
    only = tuple(e.strip() for e in args.endpoints.split(",") if e.strip())
    if unknown := set(only) - set(ENDPOINTS):
        parser.error(
            f"--endpoints: unknown {', '.join(sorted(unknown))}; use {', '.join(ENDPOINTS)}"
        )
    results = run(
        args.studies, args.clients, args.seconds, args.api_processes, args.keep,
        args.private_postgres, args.keep_dir, args.reuse, args.think, args.reader_seconds,
        phases, only,
    )  # fmt: skip
    errors = sum(r["errors"] for r in results.values())
    print(f"errors {errors}")
    for mode, label in (("closed", "closed loop (saturation)"), ("reader", "reader-like")):
        if mode not in phases:
            continue
        measured = {  # the endpoints driven (--endpoints) that have a target
            name: (results[f"{mode}/{name}"]["p99"], target)
            for name, target in TARGETS.items()
            if f"{mode}/{name}" in results
        }
        verdicts = [
            f"{name} p99 {p99 * 1000:.0f} ms {'≤' if p99 <= target else '>'} {target * 1000:.0f} ms"
            for name, (p99, target) in measured.items()
        ]
        met = all(p99 <= target for p99, target in measured.values())
        print(f"{label}: latency targets {'met' if met else 'NOT met'} ({'; '.join(verdicts)})")
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
