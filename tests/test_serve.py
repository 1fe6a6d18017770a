"""`remote-dx serve` and `remote-dx api` as real processes: they come up ready, answer, and stop
cleanly (exit status 0, ports released) on SIGTERM and SIGINT (issue 2, items 6 and 7)."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from remote_dx.core.settings import Settings
from tests.conftest import settings_env
from tests.support import port_open, wait_until

BIN = Path(sys.executable).parent
REMOTE_DX = str(BIN / "remote-dx")

pytestmark = pytest.mark.slow


def _missing(*modules: str) -> list[str]:
    missing = []
    for name in modules:
        try:
            if importlib.util.find_spec(name) is None:
                missing.append(name)
        except ImportError:
            missing.append(name)
    return missing


@contextmanager
def running(args: list[str], settings: Settings, log_path: Path) -> Iterator[subprocess.Popen]:
    """Start ``remote-dx ARGS``; on the way out make sure it is gone whatever the test did."""
    env = {**os.environ, **settings_env(settings)}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [REMOTE_DX, *args], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            yield process
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)


def stop(process: subprocess.Popen, sig: signal.Signals, log_path: Path) -> int:
    process.send_signal(sig)
    try:
        return process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
        raise AssertionError(
            f"did not stop within 30 s of {sig.name}:\n{log_path.read_text()[-3000:]}"
        ) from None


def wait_ready(process: subprocess.Popen, base: str, log_path: Path) -> None:
    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(
                f"exited with {process.returncode}:\n{log_path.read_text()[-3000:]}"
            )
        try:
            return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(ready, timeout=60, message=f"{base}/readyz to answer 200")


def test_serve_demo_comes_up_answers_and_stops_cleanly(settings: Settings, tmp_path: Path) -> None:
    missing = _missing("remote_dx.ingest.dicom_scp", "remote_dx.tasks")
    if missing:
        pytest.skip(f"not written yet: {', '.join(missing)}")
    data_dir = tmp_path / "hub"
    log_path = tmp_path / "serve.log"
    args = [
        "serve",
        "--demo",
        "--data-dir", str(data_dir),
        "--http-port", str(settings.http_port),
        "--dicom-port", str(settings.dicom_port),
        "--quiet-seconds", "2",
    ]  # fmt: skip
    base = f"http://127.0.0.1:{settings.http_port}"
    with running(args, settings, log_path) as process:
        wait_ready(process, base, log_path)
        assert port_open("127.0.0.1", settings.dicom_port), "DICOM receiver not listening"
        assert (data_dir / "remote_dx.sqlite3").is_file()

        token = httpx.post(
            f"{base}/api/v1/auth/token",
            data={"username": "county_reader", "password": "demo"},
            timeout=10,
        )
        assert token.status_code == 200, token.text
        headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
        worklist = httpx.get(f"{base}/api/v1/worklist", headers=headers, timeout=10)
        assert worklist.status_code == 200, worklist.text
        assert worklist.json()["total"] == 0
        docs = httpx.get(f"{base}/docs", timeout=10)
        assert docs.status_code == 200
        assert "swagger" in docs.text.lower()

        assert stop(process, signal.SIGTERM, log_path) == 0, log_path.read_text()[-3000:]

    output = log_path.read_text()
    assert f"{settings.ae_title}@127.0.0.1:{settings.dicom_port}" in output
    assert base in output
    assert "county_reader" in output
    assert "Traceback" not in output, output[-3000:]
    assert not port_open("127.0.0.1", settings.http_port)
    assert not port_open("127.0.0.1", settings.dicom_port)


def test_api_process_alone_serves_and_stops_on_ctrl_c(settings: Settings, tmp_path: Path) -> None:
    log_path = tmp_path / "api.log"
    migrated = subprocess.run(
        [REMOTE_DX, "migrate"],
        env={**os.environ, **settings_env(settings)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    base = f"http://127.0.0.1:{settings.http_port}"
    with running(["api", "--http-port", str(settings.http_port)], settings, log_path) as process:
        wait_ready(process, base, log_path)
        assert httpx.get(f"{base}/healthz", timeout=5).json() == {"status": "ok"}
        # No network was seeded: nobody can log in, and saying so is a 401, not a crash.
        refused = httpx.post(
            f"{base}/api/v1/auth/token",
            data={"username": "county_reader", "password": "demo"},
            timeout=10,
        )
        assert refused.status_code == 401
        assert stop(process, signal.SIGINT, log_path) == 0, log_path.read_text()[-3000:]
    assert "Traceback" not in log_path.read_text()
    assert not port_open("127.0.0.1", settings.http_port)
