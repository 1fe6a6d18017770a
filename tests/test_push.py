"""`remote-dx push`, the township's C-STORE client, against a running receiver."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from remote_dx.core.models import Instance
from remote_dx.core.settings import Settings
from remote_dx.ingest.dicom_scp import Receiver, start_receiver
from remote_dx.ingest.push import push_cli, push_files
from tests.support import free_port
from tests.test_dicom_scp import make_copy, truncated

BIN = Path(sys.executable).parent


@pytest.fixture
def receiver(settings: Settings, db: sessionmaker[Session]) -> Iterator[Receiver]:
    running = start_receiver(settings)
    yield running
    running.stop(timeout=1)


def stored(db: sessionmaker[Session]) -> dict[str, str]:
    """SOP Instance UID → transfer syntax of every indexed instance."""
    with db() as session:
        return dict(
            session.execute(select(Instance.sop_instance_uid, Instance.transfer_syntax_uid)).all()
        )


def uid_and_syntax(path: Path) -> tuple[str, str]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return str(ds.SOPInstanceUID), str(ds.file_meta.TransferSyntaxUID)


@pytest.fixture
def study_folder(tmp_path: Path) -> Path:
    """A folder as a township PC has it: mixed SOP classes and syntaxes, plus a non-DICOM file."""
    folder = tmp_path / "outbox"
    (folder / "ecg").mkdir(parents=True)
    for name in ("CT_small.dcm", "MR_small_RLE.dcm", "GDCMJ2K_TextGBR.dcm", "ExplVR_BigEnd.dcm"):
        make_copy(name, folder)
    make_copy("waveform_ecg.dcm", folder / "ecg")
    (folder / "README.txt").write_text("exported by the DR console")
    return folder


def test_push_folder_sends_each_file_in_its_own_syntax_over_one_association(
    receiver: Receiver, db: sessionmaker[Session], study_folder: Path, caplog
) -> None:
    caplog.set_level("INFO", logger="remote_dx.ingest.dicom_scp")
    result = push_files(
        [study_folder],
        host="127.0.0.1",
        port=receiver.port,
        calling_ae="XIPING_DR",
        called_ae="REMOTE_DX",
        progress=False,
    )
    assert result.ok, result.failed
    assert result.sent == 5
    assert [p.name for p in result.skipped] == ["README.txt"]
    expected = dict(uid_and_syntax(p) for p in study_folder.rglob("*.dcm"))
    assert stored(db) == expected  # RLE, JPEG 2000, big endian … all kept as sent
    accepted = [r.message for r in caplog.records if "accepted" in r.message]
    assert len(accepted) == 1, accepted


def test_push_cli_exit_codes_and_messages(
    receiver: Receiver, db: sessionmaker[Session], study_folder: Path, capsys
) -> None:
    code = push_cli(
        [study_folder],
        host="127.0.0.1",
        port=receiver.port,
        calling_ae="XIPING_DR",
        called_ae="REMOTE_DX",
    )
    assert code == 0
    assert "5 of 5 instances sent" in capsys.readouterr().err

    complete = make_copy("CT_small.dcm", study_folder)
    bad = truncated(complete, 0.6)
    complete.unlink()
    code = push_cli(
        [study_folder],
        host="127.0.0.1",
        port=receiver.port,
        calling_ae="XIPING_DR",
        called_ae="REMOTE_DX",
    )
    err = capsys.readouterr().err
    assert code != 0
    assert f"FAILED {bad}" in err
    assert "0xC000" in err
    assert uid_and_syntax(bad)[0] not in stored(db)


def test_push_cli_reports_refused_connection_and_rejected_association(
    receiver: Receiver, study_folder: Path, capsys
) -> None:
    ct = next(study_folder.glob("CT_small*.dcm"))
    code = push_cli(
        [ct], host="127.0.0.1", port=free_port(), calling_ae="XIPING_DR", called_ae="REMOTE_DX"
    )
    err = capsys.readouterr().err
    assert code != 0
    assert f"FAILED {ct}: cannot connect" in err

    code = push_cli(
        [ct], host="127.0.0.1", port=receiver.port, calling_ae="NOBODY", called_ae="REMOTE_DX"
    )
    err = capsys.readouterr().err
    assert code != 0
    assert "Calling AE title not recognised" in err


def test_remote_dx_push_command(
    receiver: Receiver, db: sessionmaker[Session], study_folder: Path
) -> None:
    run = subprocess.run(
        [str(BIN / "remote-dx"), "push", "--port", str(receiver.port), str(study_folder)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert len(stored(db)) == 5

    missing = study_folder / "missing.dcm"
    run = subprocess.run(
        [str(BIN / "remote-dx"), "push", "--port", str(receiver.port), str(missing)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode != 0
    assert f"FAILED {missing}: no such file" in run.stderr
    with db() as session:
        assert session.scalar(select(func.count(Instance.id))) == 5
