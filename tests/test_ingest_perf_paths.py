"""The fast paths of ingest (issue 2's throughput target) keep the receiver's promises.

Timings live in ``bench/ingest.py``; these tests check behaviour only: several receiver
processes share one port, the hand-made file meta equals pydicom's, the SQLite write lock, the
sharded file store layout, and that filing still answers duplicates and outages correctly.
"""

from __future__ import annotations

import copy
import hashlib
import io
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from io import BytesIO
from pathlib import Path

import pydicom
import pydicom.data
import pytest
from pydicom.data import get_charset_files, get_testdata_file
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dimse_messages import C_ECHO_RQ, C_STORE_RQ, C_STORE_RSP
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dsutils import create_file_meta
from pynetdicom.presentation import PresentationContext
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from remote_dx.core.db import write_lock
from remote_dx.core.errors import InvalidInstance
from remote_dx.core.models import Device, Instance, Series, Study
from remote_dx.core.settings import Settings
from remote_dx.ingest.dicom_scp import file_meta_bytes
from remote_dx.ingest.header import (
    HEADER_TAGS,
    InstanceHeader,
    _converted_dataset,
    _plain_header,
    read_header,
)
from remote_dx.ingest.instance import (
    Sender,
    _InstanceRow,
    file_instance,
    parse_part10,
)
from remote_dx.ingest.part10 import file_meta_value, walk
from remote_dx.ingest.presentation import supported_contexts
from remote_dx.ingest.transport import (
    EventDrivenDIMSE,
    StoreRequest,
    _SupportedContexts,
    encode_store_response,
    parse_store_request,
)
from remote_dx.storage.file_store import FileStore
from remote_dx.storage.s3_store import S3Store
from tests.conftest import settings_env
from tests.s3_server import SeaweedS3
from tests.support import wait_until
from tests.test_dicom_scp import c_store, make_copy

REMOTE_DX = str(Path(sys.executable).parent / "remote-dx")


@pytest.mark.parametrize(
    ("sop_class", "transfer_syntax", "source_ae"),
    [
        ("1.2.840.10008.5.1.4.1.1.9.1.1", "1.2.840.10008.1.2.1", "XIPING_ECG"),  # odd UID length
        ("1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.1.2", "DR1"),  # odd AE length
        ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.4.90", "XIPING_DR"),
    ],
)
def test_file_meta_bytes_equal_pydicoms_encoding(
    sop_class: str, transfer_syntax: str, source_ae: str
) -> None:
    instance = "1.2.826.0.1.3680043.8.498.12345678901234567890123"
    meta = FileMetaDataset(
        create_file_meta(
            sop_class_uid=sop_class, sop_instance_uid=instance, transfer_syntax=transfer_syntax
        )
    )
    meta.SourceApplicationEntityTitle = source_ae
    expected = DicomBytesIO()
    expected.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(expected, meta, enforce_standard=True)
    assert file_meta_bytes(sop_class, instance, transfer_syntax, source_ae) == expected.getvalue()


def test_receiver_processes_share_the_port(
    dcmtk: str, settings: Settings, db: sessionmaker[Session], tmp_path: Path
) -> None:
    """``remote-dx scp --processes 2``: both processes accept associations on one port."""
    env = {**os.environ, **settings_env(settings), "RDX_LOG_LEVEL": "INFO"}
    log_path = tmp_path / "scp.log"
    files = [make_copy("CT_small.dcm", tmp_path) for _ in range(16)]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [REMOTE_DX, "scp", "--processes", "2"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        try:

            def listening() -> set[str]:
                if process.poll() is not None:
                    raise AssertionError(log_path.read_text()[-3000:])
                text = log_path.read_text()
                return set(re.findall(r"\[(\d+)\]: DICOM receiver .* port shared", text))

            pids = wait_until(lambda: len(listening()) == 2 and listening(), timeout=60)
            # One association per file: the kernel spreads new connections over the listeners
            # by a hash of the client port, so 16 of them reach both (all on one: p = 2^-15).
            for path in files:
                assert c_store(settings.dicom_port, [path]) == [0x0000]
            with db() as session:
                assert session.scalar(select(func.count(Instance.id))) == 16

            def served() -> set[str]:
                text = log_path.read_text()
                return set(re.findall(r"\[(\d+)\]: association from XIPING_DR released", text))

            wait_until(lambda: len(served()) == 2, timeout=10, message="both processes serving")
            assert served() == pids
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
    for pid in pids:  # the children are gone too
        assert (
            not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
        )


def test_sqlite_write_lock_serialises_writers(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    lock = write_lock(engine)
    assert write_lock(engine) is lock  # one per database file
    inside, overlaps = [0], [0]
    guard = threading.Lock()

    def writer() -> None:
        for _ in range(50):
            with lock:
                with guard:
                    inside[0] += 1
                    overlaps[0] += inside[0] > 1
                time.sleep(0.0002)
                with guard:
                    inside[0] -= 1

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert overlaps[0] == 0
    assert (tmp_path / "db.sqlite3.write-lock").exists()  # the cross-process half (flock)
    memory = create_engine("sqlite://")
    postgres = create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")
    assert type(write_lock(memory)) is not type(lock)
    assert type(write_lock(postgres)) is not type(lock)


def test_file_store_shards_keys_and_reads_the_old_layout(tmp_path: Path) -> None:
    root = tmp_path / "objects"
    store = FileStore(root)
    key = "dicom/1.2.3/1.2.3.4/1.2.3.4.5.dcm"
    store.put(key, [b"DICM", memoryview(b"-header"), b"", bytearray(b"-payload")])
    assert store.get(key) == b"DICM-header-payload"
    files = [p for p in root.rglob("*") if p.is_file()]
    assert [p.relative_to(root).parts[1] for p in files] == [
        "dicom%2F1.2.3%2F1.2.3.4%2F1.2.3.4.5.dcm"
    ]
    assert len([p for p in root.iterdir() if p.is_dir()]) == 256  # no directory per study
    old = root / "dicom" / "9.8" / "9.8.7" / "9.8.7.6.dcm"  # the layout before sharding
    old.parent.mkdir(parents=True)
    old.write_bytes(b"old")
    assert store.get("dicom/9.8/9.8.7/9.8.7.6.dcm") == b"old"
    assert list(store.list("dicom/")) == [
        "dicom/1.2.3/1.2.3.4/1.2.3.4.5.dcm",
        "dicom/9.8/9.8.7/9.8.7.6.dcm",
    ]
    store.put("dicom/9.8/9.8.7/9.8.7.6.dcm", b"new")
    assert not old.exists() and store.get("dicom/9.8/9.8.7/9.8.7.6.dcm") == b"new"
    store.delete(key)
    assert not store.exists(key)
    assert not [p for p in root.rglob(".tmp-*")]


def test_filing_many_instances_of_one_series_counts_each_once(
    settings: Settings, db: sessionmaker[Session], tmp_path: Path
) -> None:
    """Cached study/series ids: every instance lands in the same rows, duplicates count once."""
    store = FileStore(settings.storage_dir)
    with db() as session:
        device = session.scalar(select(Device).where(Device.ae_title == "XIPING_DR"))
        assert device is not None
        sender = Sender.of(device)
    study, series = "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.1.1"
    paths = [
        make_copy("CT_small.dcm", tmp_path, study_uid=study, series_uid=series) for _ in range(5)
    ]
    results = [
        file_instance(path.read_bytes(), store=store, sessions=db, sender=sender)
        for path in [*paths, paths[0]]
    ]
    assert [r.duplicate for r in results] == [False] * 5 + [True]
    with db() as session:
        assert session.scalar(select(Study.num_instances).where(Study.study_uid == study)) == 5
        assert session.scalar(select(Study.revision).where(Study.study_uid == study)) == 5
        assert session.scalar(select(func.count(Series.id)).where(Series.series_uid == series)) == 1
        rows = session.scalars(
            select(Instance).join(Series).where(Series.series_uid == series)
        ).all()
    assert len(rows) == 5
    for row in rows:
        assert store.get(row.object_key)[128:132] == b"DICM"
        assert len(row.sha256) == 64


@pytest.mark.s3
def test_s3_store_puts_a_radiograph_in_one_request(s3_server: SeaweedS3) -> None:
    """Above the SDK's 5 MiB part size the object still goes up as one PUT (not multipart)."""
    store = S3Store(
        s3_server.endpoint,
        s3_server.access_key,
        s3_server.secret_key,
        f"perf-{uuid.uuid4().hex[:12]}",
        secure=False,
    )
    data = os.urandom(8 * 1024 * 1024 + 123)
    store.put("dicom/dx.dcm", data, content_type="application/dicom")
    assert store.get("dicom/dx.dcm") == data
    etag = s3_server.client().stat_object(store.bucket, "dicom/dx.dcm").etag
    assert "-" not in etag, f"multipart ETag {etag}"  # a multipart upload's ETag ends in -<parts>
    assert etag == hashlib.md5(data).hexdigest()


def test_sqlite_ingest_commits_share_wal_flushes_and_leave_connections_full(
    settings: Settings, db: sessionmaker[Session], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Group commit: each filing waits for a WAL fsync that started after its commit; callers
    arriving together share one; pooled connections go back to synchronous=FULL."""
    import remote_dx.core.db as core_db

    flushed: list[str] = []
    real_fsync = os.fdatasync

    def counting_fsync(fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        if path.endswith("-wal"):
            flushed.append(path)
            time.sleep(0.05)  # a slow disk: others queue up behind this flush
        real_fsync(fd)

    monkeypatch.setattr(core_db.os, "fdatasync", counting_fsync)
    store = FileStore(settings.storage_dir)
    with db() as session:
        device = session.scalar(select(Device).where(Device.ae_title == "XIPING_DR"))
        assert device is not None
        sender = Sender.of(device)
    payloads = [make_copy("CT_small.dcm", tmp_path).read_bytes() for _ in range(8)]
    file_instance(payloads[0], store=store, sessions=db, sender=sender)
    assert len(flushed) == 1  # a lone commit is flushed before file_instance returns
    threads = [
        threading.Thread(
            target=file_instance,
            args=(data,),
            kwargs={"store": store, "sessions": db, "sender": sender},
        )
        for data in payloads[1:]
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert 2 <= len(flushed) < 8  # seven concurrent commits shared flushes
    with db() as session:
        assert session.scalar(select(func.count(Instance.id))) == 8
        assert session.connection().exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL


# -- the receiver's own C-STORE command sets (ingest/transport.py) ----------------------------

_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.9.1.1"  # 12-lead ECG; odd length: NUL-padded
_SOP_INSTANCE = "1.2.826.0.1.3680043.8.498.1234567890123456789012345678"


def _pynetdicom_command_set(primitive: C_STORE | C_ECHO) -> bytes:
    """What pynetdicom puts on the wire as the command set, via its own encoder."""
    message = C_STORE_RSP() if primitive.MessageIDBeingRespondedTo is not None else C_STORE_RQ()
    if isinstance(primitive, C_ECHO):
        message = C_ECHO_RQ()
    message.primitive_to_message(primitive)
    command = b""
    for pdata in message.encode_msg(1, 16384):
        for _, data in pdata.presentation_data_value_list:
            if data[0] & 1:
                command += data[1:]
    return command


@pytest.mark.parametrize(
    ("status", "comment"),
    [
        (0x0000, None),
        (0xA700, "storage unavailable, retry later"),
        (0xA700, "database unavailable, retry later!"),  # odd length: space-padded
        (0xC000, "invalid instance: (7FE0,0010) claims 9999 bytes, only 12 left: data trunc"),
        (0x0110, "internal error: RuntimeError"),
    ],
)
def test_store_response_bytes_equal_pynetdicoms(status: int, comment: str | None) -> None:
    rsp = C_STORE()
    rsp.MessageID = 7
    rsp.MessageIDBeingRespondedTo = 7
    rsp.AffectedSOPClassUID = _SOP_CLASS
    rsp.AffectedSOPInstanceUID = _SOP_INSTANCE
    rsp.Status = status
    if comment is not None:
        rsp.ErrorComment = comment[:64]
    ours = encode_store_response(7, _SOP_CLASS, _SOP_INSTANCE, status, rsp.ErrorComment)
    assert ours == _pynetdicom_command_set(rsp)


def test_store_response_leaves_non_ascii_comments_to_pynetdicom() -> None:
    assert encode_store_response(1, _SOP_CLASS, _SOP_INSTANCE, 0xC000, "bad 32×32") is None


def _store_request(*, move: bool) -> C_STORE:
    req = C_STORE()
    req.MessageID = 513
    req.AffectedSOPClassUID = _SOP_CLASS
    req.AffectedSOPInstanceUID = _SOP_INSTANCE
    req.Priority = 2
    if move:
        req.MoveOriginatorApplicationEntityTitle = "MOVER"
        req.MoveOriginatorMessageID = 9
    req.DataSet = BytesIO(b"\x08\x00\x16\x00" + bytes(range(256)) * 4)
    return req


@pytest.mark.parametrize("move", [False, True])
def test_store_request_parsed_like_pynetdicom(move: bool) -> None:
    parsed = parse_store_request(_pynetdicom_command_set(_store_request(move=move)))
    assert parsed == StoreRequest(
        sop_class_uid=_SOP_CLASS,
        sop_instance_uid=_SOP_INSTANCE,
        message_id=513,
        priority=2,
        move_originator_ae="MOVER" if move else None,
        move_originator_id=9 if move else None,
    )


def test_store_request_parser_declines_other_commands_and_odd_elements() -> None:
    echo = C_ECHO()
    echo.MessageID = 1
    echo.AffectedSOPClassUID = "1.2.840.10008.1.1"
    assert parse_store_request(_pynetdicom_command_set(echo)) is None
    command = _pynetdicom_command_set(_store_request(move=False))
    # An element a C-STORE-RQ does not have, e.g. (0000,0900) Status.
    assert parse_store_request(command + b"\x00\x00\x00\x09\x02\x00\x00\x00\x00\x00") is None
    assert parse_store_request(command[:-3]) is None  # cut inside a value


def _feed(dimse: EventDrivenDIMSE, message: C_STORE_RQ | C_ECHO_RQ, max_pdu: int) -> None:
    for pdata in message.encode_msg(3, max_pdu):
        dimse.receive_primitive(pdata)


def test_dimse_reader_reassembles_stores_and_hands_other_messages_to_pynetdicom() -> None:
    """Fragmented C-STOREs come out as pynetdicom's primitives; a C-ECHO takes its path."""
    ae = AE()
    assoc = Association(ae, mode="acceptor")
    dimse = EventDrivenDIMSE(assoc, threading.Event())
    request = _store_request(move=True)
    payload = request.DataSet.getvalue()
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    _feed(dimse, message, max_pdu=64)  # the command and the data set in several fragments
    echo = C_ECHO()
    echo.MessageID = 514
    echo.AffectedSOPClassUID = "1.2.840.10008.1.1"
    echo_message = C_ECHO_RQ()
    echo_message.primitive_to_message(echo)
    _feed(dimse, echo_message, max_pdu=16384)
    _feed(dimse, message, max_pdu=16384)  # and whole, after pynetdicom's own message

    received = [dimse.msg_queue.get_nowait() for _ in range(3)]
    assert dimse.msg_queue.empty()
    for (context_id, primitive), kind in zip(received, (C_STORE, C_ECHO, C_STORE), strict=True):
        assert context_id == 3
        assert isinstance(primitive, kind)
    for _, store in (received[0], received[2]):
        assert store.MessageID == 513
        assert store.AffectedSOPClassUID == _SOP_CLASS
        assert store.AffectedSOPInstanceUID == _SOP_INSTANCE
        assert store.Priority == 2
        assert store.MoveOriginatorApplicationEntityTitle == "MOVER"
        assert store.MoveOriginatorMessageID == 9
        assert store.DataSet.getvalue() == payload
        assert store.is_valid_request
    assert received[1][1].MessageID == 514


# -- the header reader filing uses (ingest/instance.py) ---------------------------------------

_HEADER_SAMPLES = [
    "CT_small.dcm",  # explicit VR LE
    "waveform_ecg.dcm",  # sequences
    "MR_small_RLE.dcm",  # encapsulated
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "image_dfl.dcm",  # deflated
    "chrArab.dcm",  # Specific Character Set
    "chrH31.dcm",  # ISO 2022 (Japanese)
    "chrX1.dcm",  # ISO_IR 192
]


def _filing_rows(header: InstanceHeader) -> tuple[object, ...]:
    sender = Sender(1, 2, "INST", "AE")
    row = _InstanceRow.of(header, "key", 10, "sha", sender)
    return (row.patient, row.study, row.series, row.instance)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", _HEADER_SAMPLES)
def test_header_reader_gives_filing_what_a_full_parse_gives(name: str) -> None:
    path = get_testdata_file(name) or next(f for f in get_charset_files() if f.endswith(name))
    data = Path(path).read_bytes()
    full = InstanceHeader.of_dataset(parse_part10(data))
    assert _filing_rows(read_header(data)) == _filing_rows(full)


def _chinese_instance(charset: str) -> bytes:
    """A CT slice of a township patient with Chinese texts, as Chinese modalities send them."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.SpecificCharacterSet = charset
    ds.PatientName = "王^小明=WANG^XIAOMING"
    ds.ReferringPhysicianName = "李^医生"
    ds.StudyDescription = "胸部正位 DR"
    ds.SeriesDescription = "腹部平扫"
    ds.InstitutionName = "西坪镇卫生院"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _header_samples() -> list[tuple[str, bytes]]:
    # pydicom's bundled files only (its get_testdata_files may try to download more).
    bundled = Path(pydicom.data.__file__).parent
    samples = [(path.name, path.read_bytes()) for path in sorted(bundled.rglob("*.dcm"))]
    chinese = [(f"{charset}-ct", _chinese_instance(charset)) for charset in _CHINESE_CHARSETS]
    return [*samples, *chinese]


_CHINESE_CHARSETS = ("GB18030", "ISO_IR 192", "GBK")


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_plain_header_path_gives_what_pydicom_gives() -> None:
    """The directly decoded header equals pydicom's, wherever the direct path takes a file."""
    plain_names = []
    for name, data in _header_samples():
        try:
            syntax = file_meta_value(data, 0x00020010)
            walked = walk(data, syntax or "", HEADER_TAGS)
            converted = InstanceHeader.of_dataset(_converted_dataset(walked, syntax or ""))
        except Exception:
            continue  # not a well-formed instance: read_header refuses it on either path
        plain = _plain_header(walked, syntax or "")
        if plain is not None:
            plain_names.append(name)
            assert plain == converted, name
    # The usual instances take the direct path: CT, MR, the ECG waveform, a GB18030 name.
    usual = {"CT_small.dcm", "MR_small.dcm", "waveform_ecg.dcm"}
    assert usual | {f"{charset}-ct" for charset in _CHINESE_CHARSETS} <= set(plain_names)
    assert len(plain_names) > 50  # of the ~100 bundled files
    for charset in _CHINESE_CHARSETS:
        header = read_header(_chinese_instance(charset))
        assert header.texts["PatientName"] == "王^小明=WANG^XIAOMING"
        assert header.texts["ReferringPhysicianName"] == "李^医生"
        assert header.texts["StudyDescription"] == "胸部正位 DR"
        assert header.texts["SeriesDescription"] == "腹部平扫"


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", ["CT_small.dcm", "waveform_ecg.dcm", "MR_small_RLE.dcm"])
def test_header_reader_rejects_every_cut(name: str) -> None:
    data = Path(get_testdata_file(name)).read_bytes()  # type: ignore[arg-type]
    for fraction in (0.05, 0.25, 0.5, 0.75, 0.9, 0.999):
        with pytest.raises(InvalidInstance):
            read_header(data[: int(len(data) * fraction)])


def test_each_association_gets_its_own_copy_of_the_supported_contexts() -> None:
    contexts = _SupportedContexts(supported_contexts())
    copies = copy.deepcopy(contexts)

    def described(items: list[PresentationContext]) -> list[tuple[object, ...]]:
        return [
            (c.abstract_syntax, c.transfer_syntax, c.context_id, c.scu_role, c.scp_role)
            for c in items
        ]

    assert described(copies) == described(copy.deepcopy(list(contexts)))
    copies[0].context_id = 1
    copies[0].transfer_syntax.append("1.2.840.10008.1.2.2")
    copies[0].scp_role = True
    assert contexts[0].context_id is None
    assert "1.2.840.10008.1.2.2" not in contexts[0].transfer_syntax
    assert contexts[0].scp_role is None


# -- ingest on SQLite through sqlite3 itself (ingest/instance.py _file_on_sqlite) -------------


def _rows(sessions: sessionmaker[Session]) -> dict[str, list[dict[str, object]]]:
    """Every row of the four index tables, without ids and with times as (type, tz) only."""
    from sqlalchemy import inspect as sa_inspect

    from remote_dx.core.models import Patient

    out: dict[str, list[dict[str, object]]] = {}
    with sessions() as session:
        for model in (Patient, Study, Series, Instance):
            rows = []
            for obj in session.scalars(select(model).order_by(model.id)):
                values: dict[str, object] = {}
                for attr in sa_inspect(model).column_attrs:
                    value = getattr(obj, attr.key)
                    if attr.key == "id" or attr.key.endswith("_pk"):
                        continue
                    if hasattr(value, "tzinfo"):
                        value = ("datetime", str(value.tzinfo))
                    values[attr.key] = value
                rows.append(values)
            out[model.__tablename__] = rows
    return out


def test_sqlite_filing_writes_the_rows_sqlalchemy_writes(
    settings: Settings, db: sessionmaker[Session], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sqlite3 fast path and the SQLAlchemy path give the same rows (defaults and types too)."""
    import remote_dx.ingest.instance as instance_module
    from remote_dx.core.db import get_sessionmaker, session_scope
    from remote_dx.core.migrate import upgrade
    from remote_dx.core.network import apply_network, load_network_file
    from tests.support import DEMO_NETWORK

    other = settings.model_copy(update={"data_dir": tmp_path / "other"})
    upgrade(other)
    with session_scope(other) as session:
        apply_network(session, load_network_file(DEMO_NETWORK), with_passwords=False)
    other_db = get_sessionmaker(other)
    with db() as session:
        device = session.scalar(select(Device).where(Device.ae_title == "XIPING_DR"))
        assert device is not None
        sender = Sender.of(device)
    study = "1.2.826.0.1.3680043.8.498.77"
    payloads = [
        make_copy(name, tmp_path, study_uid=study if index < 2 else None).read_bytes()
        for index, name in enumerate(["CT_small.dcm", "CT_small.dcm", "waveform_ecg.dcm"])
    ]
    fast = [
        file_instance(p, store=FileStore(tmp_path / "a"), sessions=db, sender=sender)
        for p in [*payloads, payloads[0]]
    ]
    monkeypatch.setattr(instance_module, "sqlite_file", lambda engine: None)  # the generic path
    slow = [
        file_instance(p, store=FileStore(tmp_path / "b"), sessions=other_db, sender=sender)
        for p in [*payloads, payloads[0]]
    ]
    assert fast == slow
    assert [r.duplicate for r in fast] == [False, False, False, True]
    fast_rows, slow_rows = _rows(db), _rows(other_db)
    assert fast_rows == slow_rows
    assert fast_rows["studies"][0]["status"] == "receiving"
    assert fast_rows["studies"][0]["num_instances"] == 2
    assert fast_rows["studies"][0]["validation_problems"] == []
    assert fast_rows["instances"][0]["received_at"] == ("datetime", "UTC")


def test_sqlite_filing_maps_a_lost_database_to_database_unavailable(
    settings: Settings, db: sessionmaker[Session], tmp_path: Path
) -> None:
    from remote_dx.core.errors import DatabaseUnavailable

    with db() as session:
        device = session.scalar(select(Device).where(Device.ae_title == "XIPING_DR"))
        assert device is not None
        sender = Sender.of(device)
    gone = sessionmaker(create_engine(f"sqlite:///{tmp_path / 'no-such-dir' / 'db.sqlite3'}"))
    data = make_copy("CT_small.dcm", tmp_path).read_bytes()
    with pytest.raises(DatabaseUnavailable):
        file_instance(data, store=FileStore(tmp_path / "objects"), sessions=gone, sender=sender)


# -- association negotiation: UID validation remembered (ingest/transport.py) ----------------


def test_uid_validation_is_remembered_but_still_refuses_bad_uids() -> None:
    from pynetdicom import pdu_items

    import remote_dx.ingest.transport  # noqa: F401  (installs the memoised set_uid)

    first = pdu_items.set_uid(b"1.2.840.10008.1.2.1", "Transfer Syntax Name")
    again = pdu_items.set_uid(b"1.2.840.10008.1.2.1", "Transfer Syntax Name")
    assert first == "1.2.840.10008.1.2.1" and again is first
    for _ in range(2):  # a refusal is never remembered as a success
        with pytest.raises(ValueError):
            pdu_items.set_uid(b"1.2." + b"3" * 70, "Abstract Syntax Name")  # > 64 characters
    assert pdu_items.set_uid(None, "Abstract Syntax Name") is None


def test_a_uid_object_passed_on_is_remembered_too() -> None:
    from pydicom.uid import UID
    from pynetdicom import presentation

    import remote_dx.ingest.transport  # noqa: F401

    uid = UID("1.2.840.10008.5.1.4.1.1.2")  # pynetdicom hands its own UIDs from item to context
    first = presentation.set_uid(uid, "abstract_syntax", True, False, True)
    assert presentation.set_uid(UID(str(uid)), "abstract_syntax", True, False, True) is first
    private = UID("1.2.3.4.5")
    private.set_private_encoding(False, True)
    kept = presentation.set_uid(private, "abstract_syntax", True, False, True)
    assert kept._PRIVATE_TS_ENCODING == (False, True)  # such a UID is passed on, never shared
    with pytest.raises(ValueError):
        presentation.set_uid(UID("1.2." + "3" * 70), "abstract_syntax", True, False, True)


def test_transfer_syntaxes_are_checked_once_and_added_as_before(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from pydicom import uid as pydicom_uid
    from pynetdicom.presentation import PresentationContext

    import remote_dx.ingest.transport  # noqa: F401  (installs the memoised add_transfer_syntax)

    first = PresentationContext()
    first.add_transfer_syntax(b"1.2.840.10008.1.2.1")
    first.add_transfer_syntax("1.2.840.10008.1.2.1")  # no duplicates, as in pynetdicom
    assert first.transfer_syntax == ["1.2.840.10008.1.2.1"]
    PresentationContext().add_transfer_syntax("1.2.840.10008.1.2.1")  # the str form, added

    checks: list[str] = []
    real_is_valid = pydicom_uid.UID.is_valid
    monkeypatch.setattr(
        pydicom_uid.UID,
        "is_valid",
        property(lambda self: checks.append(str(self)) or real_is_valid.fget(self)),
    )
    second = PresentationContext()
    second.add_transfer_syntax(b"1.2.840.10008.1.2.1")
    second.add_transfer_syntax("1.2.840.10008.1.2.1")
    assert second.transfer_syntax == ["1.2.840.10008.1.2.1"]
    assert type(second.transfer_syntax[0]) is pydicom_uid.UID
    assert checks == []  # remembered: not matched against the UI expression again

    # A UID that is no transfer syntax, or a non-conformant one, is warned about every time.
    for syntax, warning in (
        ("1.2.840.10008.5.1.4.1.1.2", "not a transfer syntax"),
        ("1.2.03.4", "non-conformant"),
    ):
        for _ in range(2):
            caplog.clear()
            with caplog.at_level("WARNING", logger="pynetdicom"):
                PresentationContext().add_transfer_syntax(syntax)
            assert warning in caplog.text
    for _ in range(2):  # and one too long refused every time
        with pytest.raises(ValueError):
            PresentationContext().add_transfer_syntax("1.2." + "3" * 70)


# -- several receiver processes: the dispatcher (ingest/transport.py) -------------------------


def _passed(channel: socket.socket, timeout: float) -> socket.socket | None:
    channel.settimeout(timeout)
    try:
        _msg, fds, _flags, _addr = socket.recv_fds(channel, 16, 4)
    except TimeoutError:
        return None
    assert len(fds) == 1
    return socket.socket(fileno=fds[0])


def test_dispatcher_hands_connections_to_the_least_loaded_ready_process() -> None:
    from remote_dx.ingest.transport import AssociationDispatcher

    dispatcher = AssociationDispatcher(("127.0.0.1", 0))
    pairs = [socket.socketpair() for _ in range(2)]
    for ours, _theirs in pairs:
        dispatcher.add(ours)
    dispatcher.start()
    workers = [theirs for _ours, theirs in pairs]
    clients: list[socket.socket] = []
    held: list[socket.socket] = []

    def connect() -> None:
        clients.append(socket.create_connection(dispatcher.address, timeout=5))

    def receiver_of_next() -> int:
        connect()
        for _ in range(50):
            for index, worker in enumerate(workers):
                got = _passed(worker, 0.05)
                if got is not None:
                    held.append(got)
                    return index
        raise AssertionError("connection not handed over")

    try:
        connect()  # nobody is ready: the connection waits in the backlog
        assert all(_passed(worker, 0.2) is None for worker in workers)
        workers[0].send(b"+")  # one of two: still waiting for the other
        assert all(_passed(worker, 0.2) is None for worker in workers)
        workers[1].send(b"+")
        first = None
        for _ in range(100):
            got = [_passed(worker, 0.05) for worker in workers]
            if any(got):
                first = next(index for index, sock in enumerate(got) if sock is not None)
                held.extend(sock for sock in got if sock is not None)
                break
        assert first is not None, "the waiting connection was not handed over"
        other = 1 - first
        assert receiver_of_next() == other  # the idle one
        assert dispatcher.loads() == [1, 1]
        workers[other].send(b"-")  # its association ended
        wait_until(lambda: dispatcher.loads()[other] == 0, timeout=5)
        assert receiver_of_next() == other
        workers[first].send(b"-")
        wait_until(lambda: dispatcher.loads()[first] == 0, timeout=5)
        assert receiver_of_next() == first
        workers[first].close()  # a receiver process dies: the other one takes everything
        wait_until(lambda: not dispatcher.states()[first][0], timeout=5)
        assert [receiver_of_next() for _ in range(3)] == [other] * 3
    finally:
        dispatcher.stop()
        for sock in [*clients, *held, *workers]:
            sock.close()


def test_wal_flushes_are_shared_across_receiver_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Receiver processes share one database's flushes: a commit made before another process's
    flush started waits for that flush instead of making its own, and a commit made after a
    flush started is never counted as covered by it.

    Each ``_WalSync`` opens the shared counters file itself, so its ``flock`` contends with the
    others' exactly as another process's would.
    """
    import remote_dx.core.db as core_db

    database = str(tmp_path / "hub.sqlite3")
    Path(database + "-wal").write_bytes(b"")
    a, b, c = (core_db._WalSync(database) for _ in range(3))
    started: list[str] = []
    in_flush = threading.Event()
    release = threading.Event()
    real_fdatasync = os.fdatasync

    def fdatasync(fd: int) -> None:
        started.append(threading.current_thread().name)
        if threading.current_thread().name == "a":
            in_flush.set()
            assert release.wait(10)
        real_fdatasync(fd)

    asked: dict[str, threading.Event] = {"b": threading.Event(), "c": threading.Event()}
    real_flock = core_db.fcntl.flock

    def flock(fd: int, operation: int) -> None:
        name = threading.current_thread().name
        if operation == core_db.fcntl.LOCK_EX and name in asked:
            asked[name].set()  # it has read the flush numbers and now waits for the lock
        real_flock(fd, operation)

    monkeypatch.setattr(core_db.os, "fdatasync", fdatasync)
    monkeypatch.setattr(core_db.fcntl, "flock", flock)
    a.sync()  # alone: flushes
    b.sync()  # after a's flush completed: needs its own
    assert started == ["MainThread", "MainThread"]
    started.clear()

    first = threading.Thread(target=a.sync, name="a")
    first.start()
    assert in_flush.wait(10)
    # b and c commit while a's flush runs: a's flush started before their commits, so one more
    # flush is due, and they share it.
    second = threading.Thread(target=b.sync, name="b")
    third = threading.Thread(target=c.sync, name="c")
    second.start()
    third.start()
    assert asked["b"].wait(10) and asked["c"].wait(10)  # both wait for a's lock
    release.set()
    for thread in (first, second, third):
        thread.join(10)
    assert started[0] == "a" and len(started) == 2, started
