"""Helpers shared by tests (not fixtures): ports, server probes, paths."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
SAMPLE_STUDIES = ROOT / "sample_studies"
DEMO_NETWORK = SAMPLE_STUDIES / "demo_network.yaml"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (tests never assume 11112 or 8000 are free)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(
    predicate: Callable[[], object],
    timeout: float = 30.0,
    interval: float = 0.1,
    message: str = "condition",
) -> object:
    """Poll ``predicate`` until it returns something truthy; fail the test on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {message}")
        time.sleep(interval)
