"""Orthanc as the benchmark's reference peer, started with its own configuration in a temp dir.

Only the keys the benchmark needs are set; everything else keeps Orthanc's defaults (notably
``SyncStorageArea: true``, so Orthanc, like us, answers C-STORE only after fsync and index commit,
and ``MaximumPduLength: 16384``). ``Plugins`` is an empty list so the Debian package's DICOMweb,
worklist and serve-folders plugins are not loaded. Orthanc cannot bind to loopback only (it
listens on 0.0.0.0); acceptable for a benchmark on a test machine. dcmtk inside Orthanc sets
TCP_NODELAY only when the environment says ``TCP_NODELAY=1``, so the child gets it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import BinaryIO

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
AE_TITLE = "ORTHANC"


def available() -> str | None:
    """None when Orthanc can run here, else the reason it cannot."""
    if not Path(ORTHANC).exists():
        return "Orthanc is not installed (apt-get install orthanc)"
    return None


def version() -> str:
    try:
        out = subprocess.run([ORTHANC, "--version"], capture_output=True, text=True, timeout=10)
        return out.stdout.splitlines()[0].strip()
    except (OSError, IndexError, subprocess.SubprocessError):
        return "unknown"


class OrthancPeer:
    """A fresh Orthanc (empty storage and index) under ``workdir``."""

    name = "orthanc"
    ae_title = AE_TITLE

    def __init__(self, workdir: Path, dicom_port: int, http_port: int) -> None:
        self.workdir = workdir
        self.port = dicom_port
        self.http_port = http_port
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: BinaryIO | None = None

    def config(self) -> dict[str, object]:
        storage = self.workdir / "storage"
        return {
            "Name": "remote_dx-bench",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "Plugins": [],
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": AE_TITLE,
            "DicomPort": self.port,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True,
            "SyncStorageArea": True,
        }

    def start(self, timeout: float = 30.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "orthanc.json"
        config.write_text(json.dumps(self.config(), indent=2))
        self._log = (self.workdir / "orthanc.log").open("wb")
        env = dict(os.environ, TCP_NODELAY="1")
        self.proc = subprocess.Popen(
            [ORTHANC, str(config)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.workdir,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"Orthanc exited with {self.proc.returncode}; see {self.workdir}/orthanc.log"
                )
            try:
                self.count()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"Orthanc did not answer on HTTP port {self.http_port}")

    def _get(self, path: str) -> object:
        url = f"http://127.0.0.1:{self.http_port}{path}"
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())

    def count(self) -> int:
        """Instances Orthanc has indexed, i.e. are queryable (REST ``/statistics``)."""
        stats = self._get("/statistics")
        assert isinstance(stats, dict)
        return int(stats["CountInstances"])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
