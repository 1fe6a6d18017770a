"""DICOMweb benchmark: our QIDO-RS / WADO-RS against Orthanc's DICOMweb plugin, same run.

Usage (from the repository root)::

    .venv/bin/python bench/dicomweb.py                       # 10,000 studies, SQLite, Orthanc
    .venv/bin/python bench/dicomweb.py --db sqlite,postgres  # ours on PostgreSQL too
    .venv/bin/python bench/dicomweb.py --studies 2000 --requests 100   # quicker

``--studies`` generated studies (one small 64×64 16-bit image each, five modalities, two years of
dates, half as many patients as studies, ASCII names so both sides match wildcards alike) are
filed into ours through the real filing door (``ingest.instance.file_instance``, SQLite + FileStore
embedded, or PostgreSQL + FileStore) and routed to the county pool, and sent to a fresh Orthanc
(``bench/orthanc.py``'s peer with the Debian DICOMweb plugin loaded) by dcmtk's ``storescu``.
Our API runs as its own uvicorn process; requests come from one client with keep-alive, ours
with the county reader's bearer token (every request authenticated and scoped, as in use),
Orthanc's without authentication. Each request shape is sent to ours and to Orthanc alternately
so machine noise falls on both; every sampled resource is fetched once untimed first (our
metadata is then cached as processing would have precomputed it; Orthanc warms its caches).

Shapes: QIDO-RS study search by PatientID, PatientName wildcard, StudyDate range, ModalitiesInStudy,
AccessionNumber, and the unfiltered first page (``limit=100`` where many match); WADO-RS series
metadata; WADO-RS frame 1 (Explicit VR Little Endian, as stored on both sides). Prints p50 / p95
in ms per shape and peer, result counts (both sides must agree), and the ratio ours / Orthanc of
p95 (target ≤ 1.0). Exits 1 only when a run fails outright.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

if __package__ in (None, ""):  # run as a script: make `bench` and `remote_dx` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from bench import orthanc

ROOT = Path(__file__).resolve().parent.parent
PLUGIN_CANDIDATES = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
    "/usr/lib/orthanc/libOrthancDicomWeb.so.1.7",
)
SURNAMES = ("ZHANG", "WANG", "LI", "LIU", "CHEN", "YANG", "ZHAO", "HUANG", "ZHOU", "WU")
GIVEN = ("WEI", "FANG", "NA", "MIN", "JING", "LEI", "JUN", "YAN", "TAO", "MING", "XIU", "HUA")
MODALITIES = {
    "CR": "1.2.840.10008.5.1.4.1.1.1",
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "US": "1.2.840.10008.5.1.4.1.1.6.1",
}
FIRST_DAY = date(2023, 1, 1)
TARGET_RATIO = 1.0
FRAME_ACCEPT = (
    'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1'
)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the studies ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class GeneratedStudy:
    study_uid: str
    series_uid: str
    sop_uid: str
    patient_id: str
    accession: str
    study_date: str
    modality: str


def generate(count: int, folder: Path, seed: int = 5) -> list[GeneratedStudy]:
    """Write ``count`` one-image studies as Part 10 files under ``folder``."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    pixels = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 7 % 4096).tobytes()
    studies = []
    modalities = list(MODALITIES)
    for n in range(count):
        modality = modalities[n % len(modalities)]
        patient = n // 2
        study = GeneratedStudy(
            generate_uid(),
            generate_uid(),
            generate_uid(),
            f"P{patient:06d}",
            f"ACC{n:07d}",
            (FIRST_DAY + timedelta(days=rng.randrange(730))).strftime("%Y%m%d"),
            modality,
        )
        ds = Dataset()
        ds.SOPClassUID = MODALITIES[modality]
        ds.SOPInstanceUID = study.sop_uid
        ds.StudyInstanceUID = study.study_uid
        ds.SeriesInstanceUID = study.series_uid
        ds.PatientID = study.patient_id
        rng_p = random.Random(patient)
        ds.PatientName = f"{rng_p.choice(SURNAMES)}^{rng_p.choice(GIVEN)}{patient % 97}"
        ds.PatientBirthDate = f"19{40 + patient % 60:02d}0101"
        ds.PatientSex = "MF"[patient % 2]
        ds.StudyDate = ds.SeriesDate = study.study_date
        ds.StudyTime = f"{8 + n % 10:02d}{n % 60:02d}00"
        ds.AccessionNumber = study.accession
        ds.StudyDescription = f"{modality} exam"
        ds.ReferringPhysicianName = "DOC^TOWNSHIP"
        ds.StudyID = str(n % 10000)
        ds.Modality = modality
        ds.SeriesNumber = 1
        ds.InstanceNumber = 1
        ds.Rows = ds.Columns = 64
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        ds.PixelRepresentation = 0
        ds.WindowCenter, ds.WindowWidth = 2048, 4096
        ds.PixelData = pixels
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.save_as(folder / f"{n:06d}.dcm", enforce_file_format=True)
        studies.append(study)
    # Beside the folder, not in it: storescu +sd sends every file of the folder.
    folder.with_suffix(".json").write_text(json.dumps([asdict(s) for s in studies]))
    return studies


def load_studies(folder: Path) -> list[GeneratedStudy]:
    """The studies of an earlier run's folder (``--reuse``), from its list or its files."""
    listing = folder.with_suffix(".json")
    if not listing.exists():
        import pydicom

        found = []
        for path in sorted(folder.glob("*.dcm")):
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            keys = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "PatientID")
            keys += ("AccessionNumber", "StudyDate", "Modality")
            found.append(GeneratedStudy(*(str(ds[k].value) for k in keys)))
        listing.write_text(json.dumps([asdict(s) for s in found]))
    return [GeneratedStudy(**item) for item in json.loads(listing.read_text())]


# -- the peers ------------------------------------------------------------------------------------


def plugin_path() -> str | None:
    for candidate in PLUGIN_CANDIDATES:
        if Path(candidate).exists():
            return candidate
    return None


class OrthancDicomWeb(orthanc.OrthancPeer):
    """bench/orthanc.py's peer with the DICOMweb plugin loaded (its defaults otherwise)."""

    def config(self) -> dict[str, object]:
        config = super().config()
        config["Plugins"] = [plugin_path()]
        config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/"}
        # Loading only (not timed): no fsync per instance while the studies go in.
        config["SyncStorageArea"] = False
        return config

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/dicom-web"


def load_orthanc(peer: OrthancDicomWeb, folder: Path, expected: int) -> float:
    started = time.perf_counter()
    subprocess.run(
        ["storescu", "-aec", orthanc.AE_TITLE, "+sd", "+r", "127.0.0.1", str(peer.port),
         str(folder)],
        env={**os.environ, "TCP_NODELAY": "1"},
        check=True,
        capture_output=True,
        timeout=3600,
    )  # fmt: skip
    count = peer.count()
    if count != expected:
        raise RuntimeError(f"Orthanc holds {count} instances, {expected} sent")
    return time.perf_counter() - started


@dataclass
class Ours:
    """Our index (SQLite or PostgreSQL) + FileStore, filled in process, served by uvicorn."""

    name: str
    workdir: Path
    database_url: str = ""
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    token: str = ""

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RDX_")}
        env.update(
            RDX_DATA_DIR=str(self.workdir / "var"),
            RDX_DATABASE_URL=self.database_url,
            RDX_JWT_SECRET="bench-secret-not-for-production-0123456789",
            RDX_LOG_LEVEL="WARNING",
        )
        return env

    def settings(self) -> Any:
        from remote_dx.core.settings import Settings

        return Settings(
            data_dir=self.workdir / "var",
            database_url=self.database_url,
            jwt_secret="bench-secret-not-for-production-0123456789",
        )

    def load(self, folder: Path, studies: list[GeneratedStudy]) -> float:
        from sqlalchemy import insert, select

        from remote_dx.core.clock import utcnow
        from remote_dx.core.db import (
            get_engine,
            get_sessionmaker,
            refresh_planner_statistics,
            session_scope,
        )
        from remote_dx.core.migrate import upgrade
        from remote_dx.core.models import Device, Institution, Study, StudyStatus, WorklistItem
        from remote_dx.core.network import apply_network, load_network_file
        from remote_dx.ingest.instance import Sender, file_instance
        from remote_dx.storage.factory import get_store

        settings = self.settings()
        upgrade(settings)
        with session_scope(settings) as session:
            network = load_network_file(ROOT / "sample_studies" / "demo_network.yaml")
            apply_network(session, network, with_passwords=True)
        sessions = get_sessionmaker(settings)
        store = get_store(settings)
        with sessions() as session:
            device = session.scalar(select(Device).where(Device.ae_title == "XIPING_DR"))
            sender = Sender.of(device)
            county = session.scalar(select(Institution.id).where(Institution.code == "XXXRMYY"))
        started = time.perf_counter()
        files = sorted(folder.glob("*.dcm"))

        def file_one(path: Path) -> None:
            file_instance(path.read_bytes(), store=store, sessions=sessions, sender=sender)

        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(file_one, files))
        # Routed to the county pool and processed, as the worker would leave them.
        now = utcnow()
        with sessions() as session, session.begin():
            pks = session.scalars(select(Study.id)).all()
            session.execute(
                insert(WorklistItem),
                [
                    {"study_pk": pk, "pool_id": county, "due_at": now, "routing_rule": "bench"}
                    for pk in pks
                ],
            )
            session.query(Study).update(
                {Study.status: StudyStatus.PROCESSED}, synchronize_session=False
            )
        # Planner statistics as a running hub has them after a bulk load: SQLite's from the
        # sweep (``refresh_planner_statistics``), PostgreSQL's from autovacuum's analyse.
        engine = get_engine(settings)
        if not refresh_planner_statistics(engine):
            with engine.connect() as conn:
                conn.exec_driver_sql("ANALYZE")
                conn.commit()
        return time.perf_counter() - started

    def start(self) -> None:
        log = (self.workdir / f"{self.name}-api.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "remote_dx.api.app:create_app",
             "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning",
             "--no-access-log"],
            env=self.env(), stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"our API exited; see {self.workdir}/{self.name}-api.log")
            try:
                response = httpx.post(
                    f"http://127.0.0.1:{self.port}/api/v1/auth/token",
                    data={"username": "county_reader", "password": "demo"},
                    timeout=10,
                )
                if response.status_code == 200:
                    self.token = response.json()["access_token"]
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("our API did not come up")

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/dicom-web"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# -- the requests ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    shape: str
    path: str
    params: dict[str, str]
    accept: str = "application/dicom+json"
    # Outside DICOMweb: the path per peer from the server's root (the HTTP baseline).
    root_paths: tuple[str, str] | None = None  # (ours, orthanc)


# Each peer's cheapest GET, no authentication: what one HTTP round trip costs before any work.
BASELINE = Request("HTTP baseline", "", {}, "application/json", ("/healthz", "/system"))


def requests_for(studies: list[GeneratedStudy], count: int, seed: int = 7) -> list[Request]:
    rng = random.Random(seed)
    sample = [rng.choice(studies) for _ in range(count)]
    out: list[Request] = []
    for study in sample:
        out.append(BASELINE)
        start = FIRST_DAY + timedelta(days=rng.randrange(700))
        out += [
            Request("QIDO PatientID", "/studies", {"PatientID": study.patient_id}),
            Request(
                "QIDO PatientName=X*",
                "/studies",
                {"PatientName": f"{rng.choice(SURNAMES)}^{rng.choice(GIVEN)}*", "limit": "100"},
            ),
            Request(
                "QIDO StudyDate range",
                "/studies",
                {
                    "StudyDate": f"{start:%Y%m%d}-{start + timedelta(days=30):%Y%m%d}",
                    "limit": "100",
                },
            ),
            Request(
                "QIDO ModalitiesInStudy",
                "/studies",
                {"ModalitiesInStudy": rng.choice(list(MODALITIES)), "limit": "100"},
            ),
            Request("QIDO AccessionNumber", "/studies", {"AccessionNumber": study.accession}),
            Request("QIDO first page", "/studies", {"limit": "100"}),
            Request(
                "WADO series metadata",
                f"/studies/{study.study_uid}/series/{study.series_uid}/metadata",
                {},
            ),
            Request(
                "WADO frame",
                f"/studies/{study.study_uid}/series/{study.series_uid}/instances/"
                f"{study.sop_uid}/frames/1",
                {},
                FRAME_ACCEPT,
            ),
        ]
    return out


def query_string(params: dict[str, str]) -> str:
    """The query as a client types it: QIDO's ``^`` ``*`` ``,`` ``-`` left as they are.

    Orthanc 1.10.1's DICOMweb plugin 1.7 does not percent-decode QIDO values: httpx's
    ``PatientName=ZHANG%5EWEI%2A`` reached its index as the literal text ``ZHANG%5EWEI%2A`` and
    matched nothing (seen in its ``--trace`` log), so the PatientName shape compared 0 rows with
    ours. Both peers get the same raw URL; ours decodes either form alike.
    """
    return "&".join(f"{quote(k, safe='')}={quote(v, safe='^*,-?')}" for k, v in params.items())


def fetch(client: httpx.Client, base: str, request: Request, token: str = "") -> tuple[float, int]:
    # The same client, headers (bar the bearer token ours needs) and URL for both peers; the
    # response body is read inside the timing, decoded (JSON) outside it.
    headers = {"Accept": request.accept, "Accept-Encoding": "gzip"}
    url = base + request.path
    if request.root_paths is not None:
        root = base.removesuffix("/dicom-web")
        url = root + request.root_paths[0 if token else 1]
    elif token:
        headers["Authorization"] = f"Bearer {token}"
    if request.params:
        url += "?" + query_string(request.params)
    started = time.perf_counter()
    response = client.get(url, headers=headers)
    body = response.content
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"{base}{request.path} {request.params}: {response.status_code} "
                           f"{response.text[:200]}")  # fmt: skip
    count = len(response.json()) if request.shape.startswith("QIDO") else len(body)
    return elapsed, count


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def run(ours: list[Ours], peer: OrthancDicomWeb, requests: list[Request]) -> dict[str, Any]:
    names = [o.name for o in ours] + ["orthanc"]
    times: dict[str, dict[str, list[float]]] = {n: {} for n in names}
    rows: dict[str, dict[str, int]] = {n: {} for n in names}  # QIDO rows returned, per shape
    mismatches: dict[str, int] = {}
    with httpx.Client(timeout=60) as client:
        targets = [(o.name, o.base, o.token) for o in ours] + [("orthanc", peer.base, "")]
        for request in requests:  # untimed warm-up: our metadata computed once, caches filled
            for _name, base, token in targets:
                fetch(client, base, request, token)
        for index, request in enumerate(requests):
            counts = {}
            order = targets if index % 2 == 0 else list(reversed(targets))
            for name, base, token in order:
                elapsed, count = fetch(client, base, request, token)
                times[name].setdefault(request.shape, []).append(elapsed * 1000)
                counts[name] = count
                if request.shape.startswith("QIDO"):
                    rows[name][request.shape] = rows[name].get(request.shape, 0) + count
            if request.shape.startswith("QIDO") and len(set(counts.values())) > 1:
                mismatches[request.shape] = mismatches.get(request.shape, 0) + 1
    return {"times": times, "rows": rows, "mismatches": mismatches}


def report(result: dict[str, Any], ours: list[Ours]) -> None:
    times = result["times"]
    shapes = list(times["orthanc"])
    header = f"{'shape':26}" + "".join(
        f"{name + ' p50':>14}{name + ' p95':>14}" for name in [*(o.name for o in ours), "orthanc"]
    )
    print(header)
    for shape in shapes:
        line = f"{shape:26}"
        for name in [*(o.name for o in ours), "orthanc"]:
            values = times[name][shape]
            line += f"{percentile(values, 50):14.2f}{percentile(values, 95):14.2f}"
        print(line)
    print()
    for o in ours:
        met = True
        print(f"ratio {o.name} / orthanc (p95; ≤ {TARGET_RATIO:.1f} is the target; p50 beside)")
        for shape in shapes:
            ratio95 = percentile(times[o.name][shape], 95) / percentile(times["orthanc"][shape], 95)
            ratio50 = percentile(times[o.name][shape], 50) / percentile(times["orthanc"][shape], 50)
            note = ""
            if shape == BASELINE.shape:
                note = "  (no DICOMweb work: the fixed cost of a request; not a target)"
            else:
                met &= ratio95 <= TARGET_RATIO
            print(f"  {shape:26} p95 {ratio95:6.2f}   p50 {ratio50:6.2f}{note}")
        print(f"  {'TARGET MET' if met else 'BELOW TARGET'} for {o.name}")
    print()
    names = [*(o.name for o in ours), "orthanc"]
    print("QIDO rows returned over all requests of a shape (both sides must match the same rows):")
    for shape in shapes:
        if shape.startswith("QIDO"):
            counts = "  ".join(f"{n} {result['rows'][n].get(shape, 0)}" for n in names)
            print(f"  {shape:26} {counts}")
    if result["mismatches"]:
        print(f"result counts differed for: {result['mismatches']}")
    else:
        print("result counts agreed on every QIDO request")


def load() -> str:
    """The 1/5/15-minute load averages: every figure is read against them."""
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def postgres_database() -> tuple[str, Any]:
    import psycopg

    name = f"rdx_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        from remote_dx.core.db import dispose_engines

        dispose_engines()
        with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}", drop


def measure(ours: list[Ours], peer: OrthancDicomWeb, studies: list[GeneratedStudy], n: int) -> None:
    """Send ``n`` sampled requests per shape to every peer, alternating, and print the report."""
    requests = requests_for(studies, n)
    print(f"{len(requests)} requests per peer, alternating peers; load {load()}\n")
    report(run(ours, peer, requests), ours)
    print(f"load average after the run: {load()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=150, help="sampled studies per shape")
    parser.add_argument("--db", default="sqlite", help="sqlite, postgres or sqlite,postgres")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--reuse",
        type=Path,
        help="a work directory an earlier --keep run left (SQLite): its studies, our index and "
        "Orthanc's storage are used as they are, nothing is generated or loaded",
    )
    args = parser.parse_args(argv)
    if args.reuse:
        args.keep, args.db = True, "sqlite"
    if reason := orthanc.available():
        print(f"cannot run: {reason}")
        return 1
    if plugin_path() is None:
        print("cannot run: the Orthanc DICOMweb plugin is not installed (orthanc-dicomweb)")
        return 1
    workdir = args.reuse or Path(tempfile.mkdtemp(prefix="rdx-bench-dicomweb-"))
    peer = OrthancDicomWeb(workdir / "orthanc", free_port(), free_port())
    ours: list[Ours] = []
    cleanups = []
    try:
        started = time.perf_counter()
        print(f"{orthanc.version()}, DICOMweb plugin {plugin_path()}")
        if args.reuse:
            studies = load_studies(workdir / "studies")
            mine = Ours("sqlite", workdir / "sqlite")
            mine.start()
            ours.append(mine)
            peer.start()
            if peer.count() != len(studies):
                raise SystemExit(f"Orthanc holds {peer.count()} instances, not {len(studies)}")
            print(f"reusing {workdir}: {len(studies)} studies on both sides")
            measure(ours, peer, studies, args.requests)
            return 0
        studies = generate(args.studies, workdir / "studies")
        print(f"generated {len(studies)} studies in {time.perf_counter() - started:.1f} s")
        for kind in args.db.split(","):
            url = ""
            if kind == "postgres":
                url, drop = postgres_database()
                cleanups.append(drop)
            elif kind != "sqlite":
                raise SystemExit(f"unknown --db {kind}")
            mine = Ours(kind, workdir / kind, url)
            mine.workdir.mkdir(parents=True)
            seconds = mine.load(workdir / "studies", studies)
            print(f"ours ({kind}): filed {len(studies)} studies in {seconds:.1f} s")
            mine.start()
            ours.append(mine)
        peer.start()
        seconds = load_orthanc(peer, workdir / "studies", len(studies))
        print(f"orthanc: stored {len(studies)} studies in {seconds:.1f} s")
        measure(ours, peer, studies, args.requests)
        return 0
    finally:
        for mine in ours:
            mine.stop()
        peer.stop()
        for cleanup in cleanups:
            cleanup()
        if args.keep:
            print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
