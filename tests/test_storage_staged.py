"""Ingest on SQLite + FileStore flushes the object and the index concurrently (issue 2).

The object is written and renamed into place, then flushed in a helper thread while the filing
thread commits the index row and flushes the WAL. These tests check the promises that still
hold: the answer waits for both flushes; a failed object flush is a "retry later" failure that
leaves nothing to trust; and a re-send of an instance whose row exists but whose object is
missing or damaged (a crash between the two flushes) stores the object again.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from remote_dx.core.errors import StorageUnavailable
from remote_dx.core.models import Device, Instance, Study
from remote_dx.core.settings import Settings
from remote_dx.ingest.instance import Sender, file_instance
from remote_dx.storage import file_store
from remote_dx.storage.file_store import FileStore
from tests.test_dicom_scp import make_copy


def _sender(db: sessionmaker[Session]) -> Sender:
    with db() as session:
        device = session.scalar(select(Device).where(Device.ae_title == "XIPING_DR"))
        assert device is not None
        return Sender.of(device)


def _row(db: sessionmaker[Session], sop_uid: str) -> Instance:
    with db() as session:
        rows = session.scalars(select(Instance).where(Instance.sop_instance_uid == sop_uid)).all()
        assert len(rows) == 1
        return rows[0]


def _study(db: sessionmaker[Session], study_uid: str) -> Study:
    with db() as session:
        study = session.scalar(select(Study).where(Study.study_uid == study_uid))
        assert study is not None
        return study


def test_object_flush_runs_beside_the_wal_flush_and_the_answer_waits_for_both(
    settings: Settings, db: sessionmaker[Session], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import remote_dx.core.db as core_db

    wal_flush_started = threading.Event()
    overlapped: list[bool] = []
    object_flushed = threading.Event()
    real_fdatasync = os.fdatasync
    objects = str(settings.storage_dir.resolve())

    def fdatasync(fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        if path.endswith("-wal"):
            wal_flush_started.set()
        elif path.startswith(objects):
            # Sequential flushes (object, then index) would never see the WAL flush start here.
            overlapped.append(wal_flush_started.wait(timeout=10))
        real_fdatasync(fd)
        if path.startswith(objects):
            object_flushed.set()

    # core_db.os and file_store.os are the same module: one stand-in sees both flushes.
    monkeypatch.setattr(core_db.os, "fdatasync", fdatasync)
    store = FileStore(settings.storage_dir)
    data = make_copy("CT_small.dcm", tmp_path).read_bytes()
    filed = file_instance(data, store=store, sessions=db, sender=_sender(db))
    assert overlapped == [True]
    assert object_flushed.is_set()  # file_instance returned only after the object's flush
    assert store.get(filed.object_key) == data
    assert _row(db, filed.sop_instance_uid).sha256 == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("damage", ["missing", "truncated", "empty"])
def test_resend_repairs_a_row_whose_object_never_became_durable(
    damage: str, settings: Settings, db: sessionmaker[Session], tmp_path: Path
) -> None:
    store = FileStore(settings.storage_dir)
    sender = _sender(db)
    data = make_copy("CT_small.dcm", tmp_path).read_bytes()
    first = file_instance(data, store=store, sessions=db, sender=sender)
    revision = _study(db, first.study_uid).revision
    path = store._existing(first.object_key)
    assert path is not None
    # What a power cut between the index flush and the object flush can leave behind.
    if damage == "missing":
        path.unlink()
    else:
        path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"")

    with db() as session:  # as `remote-dx fsck --repair` marks a row whose object is gone
        session.execute(
            update(Instance)
            .where(Instance.sop_instance_uid == first.sop_instance_uid)
            .values(missing_at=func.now())
        )
        session.commit()

    again = file_instance(data, store=store, sessions=db, sender=sender)
    assert again.duplicate
    assert store.get(first.object_key) == data
    row = _row(db, first.sop_instance_uid)
    assert (row.size_bytes, row.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert row.missing_at is None
    study = _study(db, first.study_uid)
    assert study.num_instances == 1  # repaired, not counted twice
    assert study.revision == revision + 1  # re-opened: processed again with the whole object


def test_resend_of_an_intact_instance_writes_nothing(
    settings: Settings, db: sessionmaker[Session], tmp_path: Path
) -> None:
    store = FileStore(settings.storage_dir)
    sender = _sender(db)
    data = make_copy("CT_small.dcm", tmp_path).read_bytes()
    first = file_instance(data, store=store, sessions=db, sender=sender)
    path = store._existing(first.object_key)
    assert path is not None
    inode = path.stat().st_ino
    revision = _study(db, first.study_uid).revision
    assert file_instance(data, store=store, sessions=db, sender=sender).duplicate
    assert path.stat().st_ino == inode
    assert _study(db, first.study_uid).revision == revision


def test_failed_object_flush_is_retry_later_and_the_resend_stores_it(
    settings: Settings, db: sessionmaker[Session], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FileStore(settings.storage_dir)
    sender = _sender(db)
    source = make_copy("CT_small.dcm", tmp_path)
    data = source.read_bytes()
    sop_uid = str(pydicom.dcmread(source, stop_before_pixels=True).SOPInstanceUID)
    real_fdatasync = os.fdatasync

    objects = str(settings.storage_dir.resolve())

    def failing(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").startswith(objects):
            raise OSError(5, "Input/output error")
        real_fdatasync(fd)  # the WAL's flush (same os module) still works

    monkeypatch.setattr(file_store.os, "fdatasync", failing)
    with pytest.raises(StorageUnavailable):
        file_instance(data, store=store, sessions=db, sender=sender)
    # The row may stay (it was committed beside the flush); the object must not be trusted.
    assert _row(db, sop_uid) is not None
    key = _row(db, sop_uid).object_key
    assert not store.exists(key)

    monkeypatch.setattr(file_store.os, "fdatasync", real_fdatasync)
    again = file_instance(data, store=store, sessions=db, sender=sender)
    assert again.duplicate
    assert store.get(key) == data
    assert _study(db, again.study_uid).num_instances == 1
