"""The command line: options reach every part of the process, not just the first object."""

from __future__ import annotations

from pathlib import Path

import pytest

from remote_dx.cli import _settings
from remote_dx.core.settings import get_settings


def test_command_options_reach_get_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("RDX_DATA_DIR", "RDX_HTTP_PORT", "RDX_DEMO"):
        monkeypatch.setenv(name, "placeholder")  # so the test's environment is restored after
    chosen = _settings(data_dir=tmp_path / "hub2", http_port=8123, demo=True, quiet_seconds=None)
    assert chosen.data_dir == tmp_path / "hub2"
    # Code deep inside a stage (tasks, signing key, routing rules) reads get_settings().
    deep = get_settings()
    assert deep.data_dir == tmp_path / "hub2"
    assert deep.http_port == 8123
    assert deep.demo is True
    assert deep.quiet_seconds == 10.0
