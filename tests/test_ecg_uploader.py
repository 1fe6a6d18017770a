"""The township ECG uploader (issue 3: `remote-dx upload-ecg FILE|DIR [--watch]`).

Most tests talk to a fake hub (http.server in a thread) that records every upload and can be
stopped, or switched to answer 503, so the offline queue is exercised for real: hub down at
start, files created meanwhile, uploader killed and restarted, hub back → every ECG arrives
exactly once. The last test runs against a real `remote-dx serve --demo`.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from email.parser import BytesParser
from email.policy import default as email_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from remote_dx.uploader.exports import Settle, collect, group
from remote_dx.uploader.hub import HubClient
from remote_dx.uploader.journal import Journal, export_key
from remote_dx.uploader.runner import Backoff, Uploader, upload_cli
from tests.support import SHARED_DATA, free_port, wait_until

BIN = Path(sys.executable).parent
DEVICE_KEY = "xiping-ecg-key"


class FakeHub:
    """Records uploads; answers like the contract of POST /api/v1/ecg says the hub does."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.mode = "ok"  # or "503"
        self.uploads: list[dict[str, Any]] = []  # answered 201
        self.attempts: list[dict[str, Any]] = []  # every ECG request that got past auth
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path == "/api/v1/auth/token":
                    form = urllib.parse.parse_qs(body.decode())
                    if form.get("username") == ["tech"] and form.get("password") == ["pw"]:
                        self._answer(200, {"access_token": "tok-1", "token_type": "bearer"})
                    else:
                        self._answer(401, {"detail": "wrong username or password"})
                    return
                if self.path != "/api/v1/ecg":
                    self._answer(404, {"detail": "Not Found"})
                    return
                if hub.mode == "503":
                    self._answer(503, {"detail": "storage unavailable"})
                    return
                if self.headers.get("X-Device-Key") != DEVICE_KEY and (
                    self.headers.get("Authorization") != "Bearer tok-1"
                ):
                    self._answer(401, {"detail": "not authenticated"})
                    return
                message = BytesParser(policy=email_policy).parsebytes(
                    b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + body
                )
                files, fields = [], {}
                for part in message.iter_parts():
                    payload = part.get_payload(decode=True)
                    if part.get_filename():
                        files.append((part.get_filename(), payload))
                    else:
                        fields[part.get_param("name", header="content-disposition")] = (
                            payload.decode()
                        )
                record = {
                    "files": files,
                    "fields": fields,
                    "key": self.headers.get("Idempotency-Key"),
                }
                with hub.lock:
                    hub.attempts.append(record)
                    if any(b"BROKEN" in data for _, data in files):
                        self._answer(422, {"detail": "lead V3 is flat (lead-off?)"})
                        return
                    hub.uploads.append(record)
                    uid = f"2.25.{len(hub.uploads)}"
                self._answer(201, {"study_uid": uid, "format": "test"})

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def names(self) -> list[tuple[str, ...]]:
        with self.lock:
            return sorted(tuple(name for name, _ in u["files"]) for u in self.uploads)


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    fake = FakeHub()
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def down_hub() -> Iterator[FakeHub]:
    fake = FakeHub()  # not started: connection refused until the test starts it
    yield fake
    fake.stop()


def ecg_xml(folder: Path, name: str, tag: str = "") -> Path:
    path = folder / name
    path.write_bytes(f"<AnnotatedECG><id>{name}{tag}</id></AnnotatedECG>".encode())
    return path


def wfdb_pair(folder: Path, stem: str) -> tuple[Path, Path]:
    header = folder / f"{stem}.hea"
    header.write_text(
        f"{stem} 2 500 1000\n"
        f"{stem}.dat 16 200/mV 16 0 0 0 0 I\n"
        f"{stem}.dat 16 200/mV 16 0 0 0 0 II\n"
    )
    signal_file = folder / f"{stem}.dat"
    signal_file.write_bytes(hashlib.sha256(stem.encode()).digest() * 125)  # 4000 bytes
    return header, signal_file


def queued(queue: Path) -> int:
    folder = queue / "queue"
    return len(list(folder.glob("*.json"))) if folder.is_dir() else 0


def make_uploader(folder: Path, url: str, **kwargs: Any) -> tuple[Uploader, Journal]:
    journal = Journal(folder / ".rdx").open()
    uploader = Uploader(
        journal,
        HubClient(url, device_key=DEVICE_KEY, timeout=5),
        settle_seconds=kwargs.pop("settle_seconds", 0.3),
        rescan_seconds=kwargs.pop("rescan_seconds", 0.5),
        backoff=Backoff(base=0.1, cap=0.5),
        **kwargs,
    )
    return uploader, journal


class Watching:
    """An Uploader in watch mode on a thread, stopped (and checked) at the end."""

    def __init__(self, folder: Path, url: str, **kwargs: Any) -> None:
        self.uploader, self.journal = make_uploader(folder, url, watch=True, **kwargs)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.uploader.run_watch([self.journal.root.parent])
        except BaseException as exc:
            self.error = exc

    def __enter__(self) -> Watching:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.uploader.stop()
        self.thread.join(timeout=10)
        self.uploader.client.close()
        self.journal.close()
        assert not self.thread.is_alive()
        assert self.error is None, self.error


# -- finding exports ---------------------------------------------------------------------------


def test_grouping_pairs_wfdb_and_ignores_unrelated_files(tmp_path: Path) -> None:
    wfdb_pair(tmp_path, "1")
    ecg_xml(tmp_path, "a.xml")
    (tmp_path / "b.csv").write_text("I,II\n1,2\n")
    (tmp_path / "c.xml.tmp").write_text("half")
    (tmp_path / ".hidden.xml").write_text("<x/>")
    (tmp_path / "report.pdf").write_bytes(b"%PDF")
    (tmp_path / "1.i").write_text("annotations")  # LUDB-style annotation file: not an upload
    (tmp_path / "noext").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 16)
    (tmp_path / "2.dat").write_bytes(b"\0" * 10)  # a signal file whose header has not come
    sub = tmp_path / "2024-05-01"
    sub.mkdir()
    ecg_xml(sub, "d.xml")

    candidates, explicit, skipped = collect([tmp_path])
    found = group(candidates)
    labels = sorted(e.label for e in found.exports)
    assert labels == ["1.hea+1.dat", "a.xml", "b.csv", "d.xml", "noext"]
    assert [(p.name, "2.hea" in why) for p, why in found.incomplete] == [("2.dat", True)]
    assert sorted(p.name for p in skipped) == ["1.i", "report.pdf"]
    assert not explicit

    # Naming one half of a WFDB record on the command line brings the other half.
    candidates, explicit, _ = collect([tmp_path / "1.dat"])
    assert [e.label for e in group(candidates).exports] == ["1.hea+1.dat"]
    assert explicit == {tmp_path / "1.dat"}


def test_wfdb_header_names_its_signal_files(tmp_path: Path) -> None:
    header = tmp_path / "rec.hea"
    header.write_text(
        "# comment\nrec 2 360 650000\nrec_a.sig 212 200 11 1024 0 0 0 MLII\n"
        "rec_b.sig 212 200 11 1024 0 0 0 V5\n"
    )
    (tmp_path / "rec_a.sig").write_bytes(b"a")
    candidates, _, _ = collect([tmp_path])
    found = group(candidates)
    assert found.exports == []
    assert "rec_b.sig" in found.incomplete[0][1]
    (tmp_path / "rec_b.sig").write_bytes(b"b")
    candidates, _, skipped = collect([tmp_path])
    assert [e.label for e in group(candidates).exports] == ["rec.hea+rec_a.sig+rec_b.sig"]
    assert skipped == []  # claimed by the header although .sig is no ECG suffix


def test_settle_waits_for_a_quiet_file(tmp_path: Path) -> None:
    now = [100.0]
    settle = Settle(1.0, clock=lambda: now[0])
    path = tmp_path / "x.xml"
    path.write_bytes(b"<a")
    assert not settle.stable(path)
    now[0] += 0.6
    path.write_bytes(b"<abc")  # grew: the quiet period restarts
    assert not settle.stable(path)
    now[0] += 0.6
    assert not settle.stable(path) and settle.pending()
    now[0] += 0.5
    assert settle.stable(path) and not settle.pending()
    empty = tmp_path / "empty.xml"
    empty.touch()
    now[0] += 5
    settle.stable(empty)
    now[0] += 5
    assert not settle.stable(empty)  # never an empty file


def test_backoff_grows_with_jitter_up_to_the_cap() -> None:
    backoff = Backoff(base=1.0, cap=8.0, rng=random.Random(7))
    delays = [backoff.next_delay() for _ in range(8)]
    for n, delay in enumerate(delays):
        ceiling = min(8.0, 2.0**n)
        assert ceiling / 2 <= delay <= ceiling
    assert max(delays) <= 8.0
    assert backoff.next_delay(at_least=30) == 8.0  # Retry-After never beyond the cap
    backoff.reset()
    assert backoff.next_delay() <= 1.0


def test_key_names_content_and_name() -> None:
    same = export_key([("a.xml", "00" * 32)])
    assert same == export_key([("a.xml", "00" * 32)])
    assert same != export_key([("b.xml", "00" * 32)])
    assert same != export_key([("a.xml", "11" * 32)])


def test_uploader_module_does_not_import_the_server_stack() -> None:
    code = (
        "import sys, remote_dx.uploader, remote_dx.uploader.runner;"
        "heavy = [m for m in ('sqlalchemy', 'pydicom', 'neurokit2', 'numpy', 'fastapi', 'wfdb')"
        " if m in sys.modules]; print(heavy)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"


# -- one-shot mode -----------------------------------------------------------------------------


def test_one_shot_uploads_each_ecg_once_and_reports_bad_files(
    tmp_path: Path, hub: FakeHub, capsys: pytest.CaptureFixture[str]
) -> None:
    export = tmp_path / "export"
    export.mkdir()
    header, signal_file = wfdb_pair(export, "1")
    ecg_xml(export, "a.xml")
    (export / "bad.xml").write_bytes(b"<AnnotatedECG>BROKEN</AnnotatedECG>")
    (export / "readme.pdf").write_bytes(b"%PDF")

    status = upload_cli(
        [export],
        hub=hub.url,
        device_key=DEVICE_KEY,
        fields={"patient_id": "P0001", "priority": "stat", "patient_name": None},
    )
    err = capsys.readouterr().err
    assert status == 1  # one bad file: not everything was delivered
    assert "REJECTED bad.xml" in err and "lead V3 is flat" in err
    assert hub.names() == [("1.hea", "1.dat"), ("a.xml",)]
    wfdb = next(u for u in hub.uploads if len(u["files"]) == 2)
    assert dict(wfdb["files"]) == {"1.hea": header.read_bytes(), "1.dat": signal_file.read_bytes()}
    assert wfdb["fields"] == {"patient_id": "P0001", "priority": "stat"}
    assert len({u["key"] for u in hub.uploads}) == 2
    assert (export / "bad.xml").exists()  # one-shot mode never moves the user's files

    # Again, after the bad file was removed: nothing is sent twice, and now all is delivered.
    (export / "bad.xml").unlink()
    assert upload_cli([export], hub=hub.url, device_key=DEVICE_KEY) == 0
    assert "already delivered" in capsys.readouterr().err
    assert hub.names() == [("1.hea", "1.dat"), ("a.xml",)]


def test_one_shot_with_hub_down_keeps_the_queue_for_the_next_run(
    tmp_path: Path, down_hub: FakeHub, capsys: pytest.CaptureFixture[str]
) -> None:
    ecg_xml(tmp_path, "a.xml")
    assert (
        upload_cli(
            [tmp_path / "a.xml"],
            hub=down_hub.url,
            device_key=DEVICE_KEY,
            attempts=2,
            retry_max_seconds=0.2,
        )
        == 1
    )
    err = capsys.readouterr().err
    assert "hub unreachable" in err and "still queued" in err
    assert queued(tmp_path / ".rdx") == 1
    (tmp_path / "a.xml").unlink()  # the spool holds the bytes: the original may go
    down_hub.start()
    assert upload_cli([tmp_path], hub=down_hub.url, device_key=DEVICE_KEY) == 0
    assert down_hub.names() == [("a.xml",)]
    assert queued(tmp_path / ".rdx") == 0


def test_login_with_technician_credentials(tmp_path: Path, hub: FakeHub) -> None:
    ecg_xml(tmp_path, "a.xml")
    assert upload_cli([tmp_path], hub=hub.url, username="tech", password="pw") == 0
    assert hub.names() == [("a.xml",)]


@pytest.mark.parametrize(
    ("credentials", "expected"),
    [
        ({"device_key": "wrong"}, "refused our device key (401"),
        ({"username": "tech", "password": "nope"}, "refused the login of 'tech' (401"),
    ],
)
def test_refused_credentials_stop_with_a_clear_message(
    tmp_path: Path,
    hub: FakeHub,
    capsys: pytest.CaptureFixture[str],
    credentials: dict[str, str],
    expected: str,
) -> None:
    ecg_xml(tmp_path, "a.xml")
    assert upload_cli([tmp_path], hub=hub.url, **credentials) == 3
    err = capsys.readouterr().err
    assert "STOPPED" in err and expected in err
    assert hub.uploads == []
    assert queued(tmp_path / ".rdx") == 1  # a configuration error is not the file's fault


def test_wrong_hub_url_is_a_configuration_error(
    tmp_path: Path, hub: FakeHub, capsys: pytest.CaptureFixture[str]
) -> None:
    ecg_xml(tmp_path, "a.xml")
    assert upload_cli([tmp_path], hub=hub.url + "/nothing", device_key=DEVICE_KEY) == 3
    assert "no ECG upload endpoint" in capsys.readouterr().err


def test_missing_credentials_and_paths_are_usage_errors(tmp_path: Path, hub: FakeHub) -> None:
    ecg_xml(tmp_path, "a.xml")
    assert upload_cli([tmp_path], hub=hub.url) == 2
    assert upload_cli([tmp_path / "nope"], hub=hub.url, device_key=DEVICE_KEY) == 2
    assert upload_cli([tmp_path / "a.xml"], hub=hub.url, device_key=DEVICE_KEY, watch=True) == 2
    assert hub.attempts == []


def test_crash_after_the_201_resends_with_the_same_idempotency_key(
    tmp_path: Path, hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The residual window: the hub stored the ECG, the uploader died before recording it."""
    ecg_xml(tmp_path, "a.xml")
    uploader, journal = make_uploader(tmp_path, hub.url)

    def crash(*args: object) -> None:
        raise SystemExit("killed between the 201 and the local record")

    monkeypatch.setattr(journal, "record_delivered", crash)
    with pytest.raises(SystemExit):
        uploader.run_once([tmp_path])
    journal.close()
    uploader.client.close()

    uploader, journal = make_uploader(tmp_path, hub.url)
    assert uploader.run_once([tmp_path]) == 0
    journal.close()
    uploader.client.close()
    keys = [u["key"] for u in hub.uploads]
    assert len(keys) == 2 and keys[0] == keys[1]  # a hub honouring the key stores it once
    assert len(keys[0]) == 64
    record = Journal(tmp_path / ".rdx").done_record(keys[0])
    assert record is not None and record["outcome"] == "delivered"


def test_queue_directory_is_locked_against_a_second_uploader(tmp_path: Path) -> None:
    first = Journal(tmp_path / ".rdx").open()
    try:
        with pytest.raises(RuntimeError, match="already using"):
            Journal(tmp_path / ".rdx").open()
    finally:
        first.close()
    Journal(tmp_path / ".rdx").open().close()


# -- watch mode --------------------------------------------------------------------------------


def test_watch_does_not_take_a_file_still_being_written(tmp_path: Path, hub: FakeHub) -> None:
    target = tmp_path / "slow.xml"
    chunks = [b"<AnnotatedECG>"] + [b"<sample>%d</sample>" % i for i in range(10)]
    chunks.append(b"</AnnotatedECG>")
    with Watching(tmp_path, hub.url, settle_seconds=0.8, rescan_seconds=0.2):
        stop = threading.Event()
        with target.open("wb") as handle:
            for chunk in chunks:  # one chunk every 0.2 s: never quiet for 0.8 s until done
                handle.write(chunk)
                handle.flush()
                stop.wait(0.2)
        wait_until(lambda: hub.uploads, timeout=15, message="the finished file uploaded")
    assert [u["files"] for u in hub.uploads] == [[("slow.xml", b"".join(chunks))]]


def test_watch_moves_rejected_files_aside_and_never_retries_them(
    tmp_path: Path, hub: FakeHub
) -> None:
    ecg_xml(tmp_path, "good.xml")
    broken = b"<AnnotatedECG>BROKEN</AnnotatedECG>"
    (tmp_path / "bad.xml").write_bytes(broken)
    rejected = tmp_path / ".rdx" / "rejected"
    with Watching(tmp_path, hub.url) as watching:
        wait_until(lambda: (rejected / "bad.xml").exists(), timeout=15, message="bad.xml aside")
        reason = (rejected / "bad.xml.reason.txt").read_text()
        assert "422" in reason and "lead V3 is flat" in reason
        assert not (tmp_path / "bad.xml").exists()
        # The cart exports the very same bad file again: it is moved aside, not sent.
        (tmp_path / "bad.xml").write_bytes(broken)
        wait_until(lambda: not (tmp_path / "bad.xml").exists(), timeout=15, message="re-moved")
        scans = watching.uploader.scans
        wait_until(lambda: watching.uploader.scans >= scans + 3, timeout=15, message="rescans")
    assert len(list(rejected.glob("bad*.xml"))) == 2
    assert hub.names() == [("good.xml",)]
    assert sum(1 for a in hub.attempts if a["files"][0][0] == "bad.xml") == 1


def test_watch_survives_503_then_delivers_once(tmp_path: Path, hub: FakeHub) -> None:
    hub.mode = "503"
    with Watching(tmp_path, hub.url):
        ecg_xml(tmp_path, "a.xml")
        wfdb_pair(tmp_path, "7")
        wait_until(lambda: queued(tmp_path / ".rdx") == 2, timeout=15, message="two queued")
        hub.mode = "ok"
        wait_until(lambda: queued(tmp_path / ".rdx") == 0, timeout=15, message="queue drained")
    assert hub.names() == [("7.hea", "7.dat"), ("a.xml",)]


def _start_watcher(folder: Path, url: str, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RDX_")}
    return subprocess.Popen(
        [
            str(BIN / "remote-dx"),
            "upload-ecg",
            str(folder),
            "--watch",
            "--hub",
            url,
            "--settle-seconds",
            "0.3",
            "--rescan-seconds",
            "0.5",
            "--retry-max-seconds",
            "0.5",
        ],
        env={**env, "RDX_UPLOAD_DEVICE_KEY": DEVICE_KEY},
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


@pytest.mark.slow
def test_offline_queue_survives_kill_and_delivers_exactly_once(
    tmp_path: Path, down_hub: FakeHub
) -> None:
    """issue 3 Proof: hub stopped, files created, uploader killed and restarted, hub started →
    all arrive exactly once."""
    export = tmp_path / "export"
    export.mkdir()
    queue = export / ".rdx"
    log = tmp_path / "uploader.log"
    first = _start_watcher(export, down_hub.url, log)
    try:
        ecg_xml(export, "a.xml")
        wfdb_pair(export, "1")
        (export / "b.csv").write_text("I,II,III\n1,2,1\n")
        wait_until(lambda: queued(queue) == 3, timeout=30, message="three ECGs queued")
    finally:
        first.kill()  # kill -9: no chance to tidy up
        first.wait(timeout=10)

    ecg_xml(export, "c.xml")  # exported while no uploader runs
    second = _start_watcher(export, down_hub.url, log)
    try:
        wfdb_pair(export, "2")
        wait_until(lambda: queued(queue) == 5, timeout=30, message="five ECGs queued")
        down_hub.start()
        wait_until(lambda: queued(queue) == 0, timeout=30, message="the queue drained")
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=15) == 0, log.read_text()

    # A fresh one-shot run over the same folder sends nothing: everything is known delivered.
    again = subprocess.run(
        [str(BIN / "remote-dx"), "upload-ecg", str(export), "--hub", down_hub.url],
        env={**os.environ, "RDX_UPLOAD_DEVICE_KEY": DEVICE_KEY},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("already delivered") == 5

    assert down_hub.names() == [
        ("1.hea", "1.dat"),
        ("2.hea", "2.dat"),
        ("a.xml",),
        ("b.csv",),
        ("c.xml",),
    ]
    assert len({u["key"] for u in down_hub.uploads}) == 5
    for upload in down_hub.uploads:
        for name, data in upload["files"]:
            assert (export / name).read_bytes() == data
    assert "hub unreachable" in log.read_text()


# -- against the real hub ----------------------------------------------------------------------

ECG_ROUTER = Path(__file__).resolve().parent.parent / "src/remote_dx/api/routers/ecg.py"


def _upload(folder: Path, base: str, *extra: str, queue: Path | None = None) -> list[dict]:
    """Run `remote-dx upload-ecg` as the Xiping technician; the delivered records it wrote."""
    queue = queue or folder / ".rdx"
    sent = subprocess.run(
        [
            str(BIN / "remote-dx"),
            "upload-ecg",
            str(folder),
            "--hub",
            base,
            "--queue-dir",
            str(queue),
            "--username",
            "tech_xiping",
            "--password",
            "demo",
            *extra,
        ],
        env={k: v for k, v in os.environ.items() if not k.startswith("RDX_")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert sent.returncode == 0, sent.stderr
    records = [json.loads(p.read_text()) for p in (queue / "done").rglob("*.json")]
    assert records and all(r["outcome"] == "delivered" for r in records), records
    assert Journal(queue).entries() == []
    return records


@pytest.mark.slow
@pytest.mark.skipif(
    not ECG_ROUTER.exists(), reason="the hub's POST /api/v1/ecg (api/routers/ecg.py) is not there"
)
def test_upload_to_a_real_hub_reaches_the_county_worklist(settings, tmp_path: Path) -> None:
    from pydicom.data import get_testdata_file

    from tests.conftest import settings_env

    ludb = SHARED_DATA / "ecg" / "ludb" / "data"
    if not (ludb / "1.hea").exists():
        pytest.skip(f"LUDB is not at {ludb}")
    cart = tmp_path / "cart_dicom"  # a DICOM cart: the file names its patient
    cart.mkdir()
    shutil.copy(get_testdata_file("waveform_ecg.dcm"), cart / "waveform_ecg.dcm")
    wfdb = tmp_path / "cart_wfdb"  # a WFDB export: the patient comes from the form
    wfdb.mkdir()
    shutil.copy(ludb / "1.hea", wfdb / "1.hea")
    shutil.copy(ludb / "1.dat", wfdb / "1.dat")

    env = {**os.environ, **settings_env(settings)}
    log_path = tmp_path / "hub.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(BIN / "remote-dx"), "serve", "--demo"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{settings.http_port}"
        try:

            def ready() -> bool:
                if process.poll() is not None:
                    raise AssertionError(log_path.read_text()[-3000:])
                try:
                    return httpx.get(f"{base}/readyz", timeout=1).status_code == 200
                except httpx.HTTPError:
                    return False

            wait_until(ready, timeout=60, message="the hub to become ready")
            records = _upload(cart, base)
            records += _upload(wfdb, base, "--patient-id", "XP0001", "--patient-sex", "F")
            study_uids = {r["study_uid"] for r in records}
            assert len(records) == 2 and len(study_uids) == 2, records
            assert [r["parts"] for r in records] == [["waveform_ecg.dcm"], ["1.hea", "1.dat"]]

            # The local record lost (the crash window after a 201): the hub recognises the
            # resend and answers the same study instead of storing a second one.
            again = _upload(
                wfdb,
                base,
                "--patient-id",
                "XP0001",
                "--patient-sex",
                "F",
                queue=tmp_path / "lost-journal",
            )
            assert again[0]["study_uid"] == records[1]["study_uid"]
            assert again[0]["answer"].get("duplicate") is True

            token = httpx.post(
                f"{base}/api/v1/auth/token",
                data={"username": "county_reader", "password": "demo"},
                timeout=10,
            ).json()["access_token"]

            def listed() -> list[dict] | None:
                response = httpx.get(
                    f"{base}/api/v1/worklist",
                    headers={"Authorization": f"Bearer {token}"},
                    timeout=10,
                )
                assert response.status_code == 200, response.text
                items = [i for i in response.json()["items"] if i["study_uid"] in study_uids]
                return items if len(items) == len(study_uids) else None

            items = wait_until(listed, timeout=90, message="both ECGs in the county worklist")
            assert all(i["origin"] == "西坪镇卫生院" for i in items), items
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- hub log ---\n{log_path.read_text()[-3000:]}") from exc
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
