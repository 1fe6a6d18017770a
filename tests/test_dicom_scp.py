"""The DICOM receiver (issue 2, capability 3) against dcmtk's echoscu/storescu and pynetdicom.

Each test starts its own receiver on a free port over a migrated, demo-seeded database; instances
are made from pydicom's bundled test files with fresh UIDs so tests never share state.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.presentation import build_context
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from remote_dx.core.errors import InvalidInstance
from remote_dx.core.models import Device, Instance, Study
from remote_dx.core.settings import Settings
from remote_dx.ingest.dicom_scp import Receiver, start_receiver
from remote_dx.ingest.instance import parse_part10
from remote_dx.ingest.transport import EventDrivenDIMSE
from remote_dx.storage.factory import get_store
from tests.support import wait_until

CALLING = "XIPING_DR"
CALLED = "REMOTE_DX"
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


# -- helpers ----------------------------------------------------------------------------------


def make_copy(
    name: str,
    folder: Path,
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    stem: str | None = None,
) -> Path:
    """A copy of a pydicom test file with fresh UIDs; the data set (pixels too) is untouched."""
    ds = pydicom.dcmread(get_testdata_file(name))
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path = folder / f"{stem or Path(name).stem}-{ds.SOPInstanceUID[-8:]}.dcm"
    ds.save_as(path)
    return path


def c_store(port: int, paths: list[Path], calling: str = CALLING) -> list[int]:
    """Send files as they are on disk over one pynetdicom association; the status per file."""
    from pynetdicom import _config

    _config.STORE_SEND_CHUNKED_DATASET = True
    metas = [pydicom.dcmread(p, stop_before_pixels=True).file_meta for p in paths]
    pairs = {(m.MediaStorageSOPClassUID, m.TransferSyntaxUID) for m in metas}
    ae = AE(ae_title=calling)
    ae.requested_contexts = [build_context(sop, [ts]) for sop, ts in sorted(pairs)]
    assoc = ae.associate("127.0.0.1", port, ae_title=CALLED)
    assert assoc.is_established, "association not established"
    try:
        return [int(assoc.send_c_store(path).Status) for path in paths]
    finally:
        assoc.release()
        ae.shutdown()


def echo(port: int, calling: str = CALLING) -> bool:
    ae = AE(ae_title=calling)
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", port, ae_title=CALLED)
    try:
        return assoc.is_established and int(assoc.send_c_echo().Status) == 0
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()


def count_instances(sessions: sessionmaker[Session], sop_uid: str | None = None) -> int:
    with sessions() as session:
        query = select(func.count(Instance.id))
        if sop_uid is not None:
            query = query.where(Instance.sop_instance_uid == sop_uid)
        return int(session.scalar(query) or 0)


def sop_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def dcmtk_tool(tool: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool, *map(str, args)], env=DCMTK_ENV, capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def receiver(settings: Settings, db: sessionmaker[Session]) -> Iterator[Receiver]:
    running = start_receiver(settings)
    yield running
    running.stop(timeout=1)


# -- association control ----------------------------------------------------------------------


def test_unknown_calling_ae_is_rejected_and_known_one_echoes(
    dcmtk: str, receiver: Receiver, db: sessionmaker[Session], tmp_path: Path
) -> None:
    port = str(receiver.port)
    ok = dcmtk_tool("echoscu", "-aet", CALLING, "-aec", CALLED, "127.0.0.1", port)
    assert ok.returncode == 0, ok.stderr

    refused = dcmtk_tool("echoscu", "-aet", "NOBODY", "-aec", CALLED, "127.0.0.1", port)
    assert refused.returncode != 0
    assert "Calling AE Title Not Recognized" in refused.stderr

    ct = make_copy("CT_small.dcm", tmp_path)
    store = dcmtk_tool("storescu", "-aet", "NOBODY", "-aec", CALLED, "127.0.0.1", port, ct)
    assert store.returncode != 0
    assert count_instances(db) == 0
    # The receiver keeps serving registered devices afterwards.
    assert echo(receiver.port)


def test_device_registered_while_running_is_accepted(
    receiver: Receiver, db: sessionmaker[Session]
) -> None:
    assert not echo(receiver.port, calling="NEW_CR")
    with db() as session, session.begin():
        xiping = session.scalar(select(Device).where(Device.ae_title == CALLING))
        assert xiping is not None
        session.add(
            Device(
                ae_title="NEW_CR",
                name="new CR",
                modality="CR",
                institution_id=xiping.institution_id,
            )
        )
    assert echo(receiver.port, calling="NEW_CR")
    with db() as session, session.begin():
        session.scalar(select(Device).where(Device.ae_title == "NEW_CR")).enabled = False
    assert not echo(receiver.port, calling="NEW_CR")


@contextmanager
def verification_association(port: int) -> Iterator[Association]:
    """An established association proposing only Verification, released (if still up) after."""
    ae = AE(ae_title=CALLING)
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", port, ae_title=CALLED)
    try:
        assert assoc.is_established
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()


def test_tcp_nodelay_is_set_on_accepted_sockets(receiver: Receiver) -> None:
    with verification_association(receiver.port):
        server_side = wait_until(lambda: receiver.active_associations, timeout=5)
        sock = server_side[0].dul.socket.socket  # type: ignore[index]
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


# -- storage ----------------------------------------------------------------------------------


def test_storescu_stores_every_syntax_as_received(
    dcmtk: str, receiver: Receiver, settings: Settings, db: sessionmaker[Session], tmp_path: Path
) -> None:
    study = generate_uid()
    sent = {
        # file: storescu's proposal option for its transfer syntax
        make_copy("CT_small.dcm", tmp_path, study_uid=study): "-xe",
        make_copy("waveform_ecg.dcm", tmp_path, study_uid=study): "-xe",
        make_copy("MR_small_RLE.dcm", tmp_path, study_uid=study): "-xr",
        make_copy("GDCMJ2K_TextGBR.dcm", tmp_path, study_uid=study): "-xv",  # JPEG 2000
    }
    port = str(receiver.port)
    for path, option in sent.items():
        run = dcmtk_tool(
            "storescu", option, "-aet", CALLING, "-aec", CALLED, "127.0.0.1", port, path
        )
        assert run.returncode == 0, f"{path.name}: {run.stderr}"

    store = get_store(settings)
    with db() as session:
        rows = {row.sop_instance_uid: row for row in session.scalars(select(Instance))}
        num_instances = session.scalar(select(Study.num_instances).where(Study.study_uid == study))
    assert len(rows) == len(sent) == num_instances
    for path in sent:
        original = pydicom.dcmread(path)
        row = rows[str(original.SOPInstanceUID)]
        assert row.transfer_syntax_uid == str(original.file_meta.TransferSyntaxUID)
        assert row.calling_ae == CALLING
        stored = pydicom.dcmread(io.BytesIO(store.get(row.object_key)))
        assert stored.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
        assert stored.file_meta.SourceApplicationEntityTitle == CALLING
        # storescu drops Data Set Trailing Padding (FFFC,FFFC) on the wire; all else is as sent.
        differing = [e.tag for e in original if e.tag != 0xFFFCFFFC and stored.get(e.tag) != e]
        assert differing == [], f"{path.name}: {differing}"  # pixel data bytes included
    ecg_row = next(r for r in rows.values() if r.sop_class_uid.endswith(".9.1.1"))
    assert ecg_row.sop_class_uid == "1.2.840.10008.5.1.4.1.1.9.1.1"  # 12-lead ECG


def test_storage_down_answers_a700_then_resend_succeeds_once(
    dcmtk: str, receiver: Receiver, settings: Settings, db: sessionmaker[Session], tmp_path: Path
) -> None:
    study = generate_uid()
    files = [make_copy("CT_small.dcm", tmp_path, study_uid=study) for _ in range(3)]
    objects = settings.storage_dir.resolve()
    objects.parent.mkdir(parents=True, exist_ok=True)
    if objects.exists():
        objects.rename(objects.with_name("objects.away"))
    objects.write_text("not a directory: the object store is unavailable")

    args = ["-v", "-aet", CALLING, "-aec", CALLED, "127.0.0.1", str(receiver.port), *files]
    failed = dcmtk_tool("storescu", *args)
    assert failed.returncode != 0
    assert "Received Store Response (Refused: OutOfResources)" in failed.stderr, failed.stderr
    assert c_store(receiver.port, files) == [0xA700] * 3  # the exact status, for every file
    assert count_instances(db) == 0

    objects.unlink()
    resent = dcmtk_tool("storescu", *args)
    assert resent.returncode == 0, resent.stderr
    resent_again = dcmtk_tool("storescu", *args)  # a modality retrying the whole study
    assert resent_again.returncode == 0, resent_again.stderr
    for path in files:
        assert count_instances(db, sop_uid(path)) == 1
    with db() as session:
        assert session.scalar(select(Study.num_instances).where(Study.study_uid == study)) == 3


class SwitchableSessions:
    """A sessionmaker stand-in whose database can be made unreachable and back."""

    def __init__(self, good: sessionmaker[Session], tmp_path: Path) -> None:
        self.good = good
        missing = tmp_path / "no-such-dir" / "db.sqlite3"
        self.bad = sessionmaker(create_engine(f"sqlite:///{missing}"))
        self.down = False

    def __call__(self) -> Session:
        return (self.bad if self.down else self.good)()


def test_database_down_answers_a700_then_resend_succeeds(
    settings: Settings, db: sessionmaker[Session], tmp_path: Path
) -> None:
    sessions = SwitchableSessions(db, tmp_path)
    running = start_receiver(settings, sessions=sessions)  # type: ignore[arg-type]
    try:
        assert echo(running.port)  # the device is known before the database goes away
        files = [make_copy("CT_small.dcm", tmp_path) for _ in range(2)]
        sessions.down = True
        assert c_store(running.port, files) == [0xA700, 0xA700]
        sessions.down = False
        assert count_instances(db) == 0
        assert c_store(running.port, files) == [0x0000, 0x0000]
        assert count_instances(db) == 2
    finally:
        running.stop(timeout=1)


def test_duplicate_send_is_idempotent(
    receiver: Receiver, db: sessionmaker[Session], tmp_path: Path
) -> None:
    ct = make_copy("CT_small.dcm", tmp_path)
    assert c_store(receiver.port, [ct, ct]) == [0x0000, 0x0000]
    assert c_store(receiver.port, [ct]) == [0x0000]
    assert count_instances(db, sop_uid(ct)) == 1
    assert count_instances(db) == 1


def test_store_is_served_in_the_thread_that_read_it(
    receiver: Receiver, db: sessionmaker[Session], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A C-STORE is filed by the association's DUL thread, not handed to its reactor thread,
    from P-DATA values that are views of the PDU as read (no copies on the way)."""
    from pynetdicom.dul import DULServiceProvider

    from remote_dx.ingest import dicom_scp

    threads: list[threading.Thread] = []
    file_instance = dicom_scp.file_instance

    def recording(*args: object, **kwargs: object) -> object:
        threads.append(threading.current_thread())
        return file_instance(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(dicom_scp, "file_instance", recording)
    values: list[type] = []
    receive = EventDrivenDIMSE.receive_primitive

    def watching(self: EventDrivenDIMSE, primitive: Any) -> None:
        values.extend(type(data) for _, data in primitive.presentation_data_value_list)
        receive(self, primitive)

    monkeypatch.setattr(EventDrivenDIMSE, "receive_primitive", watching)
    files = [make_copy("CT_small.dcm", tmp_path), make_copy("waveform_ecg.dcm", tmp_path)]
    assert c_store(receiver.port, files) == [0x0000, 0x0000]
    assert values and set(values) == {memoryview}  # P-DATA values are views of the PDU read
    assert len(threads) == 2
    assert all(isinstance(thread, DULServiceProvider) for thread in threads)
    assert threads[0] is threads[1]  # one association, one thread
    assert count_instances(db) == 2
    assert echo(receiver.port)  # other services still go through the reactor


def test_a_store_longer_than_the_network_timeout_is_still_answered(
    settings: Settings, db: sessionmaker[Session], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The idle (network) timeout counts silence on the wire, not an instance being filed."""
    from remote_dx.ingest import dicom_scp

    file_instance = dicom_scp.file_instance

    def slow(*args: object, **kwargs: object) -> object:
        time.sleep(1.5)  # a slow disk or database, three network timeouts long
        return file_instance(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(dicom_scp, "file_instance", slow)
    running = start_receiver(settings)
    try:
        running.ae.network_timeout = 0.5
        ct = make_copy("CT_small.dcm", tmp_path)
        assert c_store(running.port, [ct]) == [0x0000]
    finally:
        running.stop(timeout=1)
    assert count_instances(db, sop_uid(ct)) == 1


def test_malformed_p_data_pdu_aborts_that_association_only(receiver: Receiver) -> None:
    """A P-DATA-TF whose item claims more than the PDU holds: A-ABORT, the receiver serves on."""
    with verification_association(receiver.port) as assoc:
        item = (200).to_bytes(4, "big") + b"\x01\x03" + b"x" * 10  # 200 claimed, 11 there
        pdu = b"\x04\x00" + len(item).to_bytes(4, "big") + item
        assoc.dul.socket.socket.sendall(pdu)  # type: ignore[union-attr]
        assert wait_until(lambda: assoc.is_aborted or not assoc.is_alive(), timeout=5)
    assert echo(receiver.port)


def truncated(path: Path, fraction: float) -> Path:
    data = path.read_bytes()
    out = path.with_name(f"truncated-{path.name}")
    out.write_bytes(data[: int(len(data) * fraction)])
    return out


def test_truncated_instance_fails_while_parallel_association_succeeds(
    receiver: Receiver, db: sessionmaker[Session], tmp_path: Path
) -> None:
    native = truncated(make_copy("CT_small.dcm", tmp_path), 0.7)  # cut inside Pixel Data
    encapsulated = truncated(make_copy("MR_small_jp2klossless.dcm", tmp_path), 0.6)
    good_study = generate_uid()
    good = [make_copy("CT_small.dcm", tmp_path, study_uid=good_study) for _ in range(10)]
    results: dict[str, list[int]] = {}

    def run(name: str, paths: list[Path]) -> None:
        results[name] = c_store(receiver.port, paths)

    threads = [
        threading.Thread(target=run, args=("bad", [native, encapsulated])),
        threading.Thread(target=run, args=("good", good)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert all(0xC000 <= status <= 0xCFFF for status in results["bad"]), results
    assert results["good"] == [0x0000] * 10
    assert count_instances(db) == 10
    assert echo(receiver.port)  # still serving new associations


def test_many_concurrent_associations_keep_an_exact_count(
    receiver: Receiver, db: sessionmaker[Session], tmp_path: Path
) -> None:
    study, series = generate_uid(), generate_uid()
    batches = [
        [make_copy("CT_small.dcm", tmp_path, study_uid=study, series_uid=series) for _ in range(10)]
        for _ in range(8)
    ]
    statuses: list[list[int]] = []
    lock = threading.Lock()

    def send(paths: list[Path]) -> None:
        result = c_store(receiver.port, paths)
        with lock:
            statuses.append(result)

    threads = [threading.Thread(target=send, args=(batch,)) for batch in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(statuses) == [[0x0000] * 10] * 8
    with db() as session:
        assert session.scalar(select(Study.num_instances).where(Study.study_uid == study)) == 80
    assert count_instances(db) == 80


# -- the structural check behind "truncated → failure" ----------------------------------------


@pytest.mark.filterwarnings("ignore:End of file reached before delimiter")
@pytest.mark.parametrize(
    "name",
    ["CT_small.dcm", "waveform_ecg.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm"],
)
def test_parse_part10_rejects_every_cut(name: str) -> None:
    data = Path(get_testdata_file(name)).read_bytes()
    parse_part10(data)
    meta_end = len(data) // 10
    for fraction in (0.25, 0.5, 0.75, 0.9, 0.999):
        cut = max(int(len(data) * fraction), meta_end)
        with pytest.raises(InvalidInstance):
            parse_part10(data[:cut])
