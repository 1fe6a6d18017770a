"""The core on PostgreSQL (scale-out) next to SQLite (embedded): migrations and concurrent filing.

Each PostgreSQL test gets a database of its own, created on the server's ``postgres`` database
and dropped afterwards, so runs never see each other's rows. Filing is driven through
:func:`remote_dx.ingest.instance.file_instance` — the single door of every way in — from eight
threads at once on one study (as many associations of one modality would), including
re-sends, and the counts must come out exact: no lost increments, no duplicate rows.
"""

from __future__ import annotations

import io
import threading
from concurrent.futures import ThreadPoolExecutor

import pydicom
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy import func, inspect, select
from sqlalchemy.orm import Session, sessionmaker

from remote_dx.core.db import get_engine, get_sessionmaker, session_scope
from remote_dx.core.migrate import alembic_config, upgrade
from remote_dx.core.models import Base, Device, Instance, Patient, Series, Study, StudyStatus
from remote_dx.core.network import apply_network, load_network_file
from remote_dx.core.settings import Settings, reset_settings
from remote_dx.ingest.instance import FiledInstance, Sender, file_instance
from remote_dx.storage.factory import make_store, reset_stores
from tests.support import DEMO_NETWORK

THREADS = 8
INSTANCES = 48  # 6 per thread, over two series
TABLES = {
    "institutions",
    "devices",
    "users",
    "patients",
    "studies",
    "series",
    "instances",
    "task_runs",
    "worklist_items",
}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(
    request: pytest.FixtureRequest, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """The test's settings on SQLite (embedded default) or on its own PostgreSQL database."""
    if request.param == "sqlite":
        return settings
    url = request.getfixturevalue("postgres_database")
    monkeypatch.setenv("RDX_DATABASE_URL", url)
    reset_settings()
    return settings.model_copy(update={"database_url": url})


def _tables(settings: Settings) -> set[str]:
    return set(inspect(get_engine(settings)).get_table_names())


def test_migrate_up_down_up(backend: Settings) -> None:
    upgrade(backend)
    assert _tables(backend) >= TABLES
    with get_engine(backend).connect() as conn:
        # The migrated schema is exactly what the models declare (no drift either way).
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []

    command.downgrade(alembic_config(backend), "base")
    assert not _tables(backend) & TABLES

    # Up again: the downgrade left nothing behind (PostgreSQL enum types included).
    upgrade(backend)
    assert _tables(backend) >= TABLES
    upgrade(backend)  # and upgrading an up-to-date database is a no-op


def _seed(settings: Settings) -> sessionmaker[Session]:
    upgrade(settings)
    with session_scope(settings) as session:
        apply_network(session, load_network_file(DEMO_NETWORK), with_passwords=False)
    return get_sessionmaker(settings)


def _sender(sessions: sessionmaker[Session], ae_title: str) -> Sender:
    with sessions() as session:
        device = session.scalar(select(Device).where(Device.ae_title == ae_title))
        assert device is not None, f"demo network has no device {ae_title}"
        return Sender.of(device)


def _instance(study_uid: str, series_uid: str, series_number: int, number: int) -> bytes:
    """A small but complete DX instance of the given study and series (GB18030 patient)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.SpecificCharacterSet = "GB18030"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.Modality = "DX"
    ds.PatientID = "XP-CONCURRENT-1"
    ds.PatientName = "Wang^XiaoDong=王^小东"
    ds.StudyDate = "20250314"
    ds.SeriesNumber = series_number
    ds.InstanceNumber = number
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = 16
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(range(256)) * 2
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _file_concurrently(settings: Settings) -> tuple[str, list[bytes], list[FiledInstance]]:
    sessions = _seed(settings)
    store = make_store(settings)
    sender = _sender(sessions, "XIPING_DR")
    study_uid = generate_uid()
    series = [generate_uid(), generate_uid()]
    payloads = [_instance(study_uid, series[i % 2], i % 2 + 1, i + 1) for i in range(INSTANCES)]
    # Each thread files its own share and then re-sends a neighbour's first instance (a
    # modality retrying after a lost response): duplicates race with the originals.
    shares = [[*payloads[i::THREADS], payloads[(i + 1) % THREADS]] for i in range(THREADS)]
    start = threading.Barrier(THREADS)

    def work(share: list[bytes]) -> list[FiledInstance]:
        start.wait(timeout=30)
        return [file_instance(d, store=store, sessions=sessions, sender=sender) for d in share]

    with ThreadPoolExecutor(THREADS) as pool:
        results = [r for done in pool.map(work, shares, timeout=120) for r in done]
    return study_uid, payloads, results


def _assert_exact(settings: Settings, study_uid: str, payloads: list[bytes], results) -> None:
    assert len(results) == INSTANCES + THREADS
    assert len({r.sop_instance_uid for r in results}) == INSTANCES
    assert sum(not r.duplicate for r in results) == INSTANCES

    sessions = get_sessionmaker(settings)
    with sessions() as session:
        study = session.scalar(select(Study).where(Study.study_uid == study_uid))
        assert study is not None
        assert study.num_instances == INSTANCES
        assert study.revision == INSTANCES
        assert study.status == StudyStatus.RECEIVING
        assert session.scalar(select(func.count(Instance.id))) == INSTANCES
        assert session.scalar(select(func.count(Series.id))) == 2
        assert session.scalar(select(func.count(Study.id))) == 1
        assert session.scalar(select(func.count(Patient.id))) == 1
        patient = session.scalar(select(Patient))
        assert patient is not None
        assert patient.name == "Wang^XiaoDong=王^小东"
        assert patient.issuer == "XIPING"  # no IssuerOfPatientID: the sending institution
        keys = set(session.scalars(select(Instance.object_key)))

    store = make_store(settings)
    assert set(store.list(f"dicom/{study_uid}/")) == keys
    by_uid = {str(pydicom.dcmread(io.BytesIO(p)).SOPInstanceUID): p for p in payloads}
    for result in results[:5]:
        assert store.get(result.object_key) == by_uid[result.sop_instance_uid]


def test_concurrent_filing_one_study_exact_counts(backend: Settings) -> None:
    study_uid, payloads, results = _file_concurrently(backend)
    _assert_exact(backend, study_uid, payloads, results)


@pytest.mark.postgres
@pytest.mark.s3
def test_concurrent_filing_postgres_and_s3(
    s3_settings: Settings, postgres_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scale-out path: index in PostgreSQL, bytes in a real S3 server."""
    monkeypatch.setenv("RDX_DATABASE_URL", postgres_database)
    reset_settings()
    reset_stores()
    settings = s3_settings.model_copy(update={"database_url": postgres_database})
    study_uid, payloads, results = _file_concurrently(settings)
    _assert_exact(settings, study_uid, payloads, results)


def test_a_nul_inside_a_text_value_is_filed_on_both_backends(backend: Settings) -> None:
    """A modality that pads with NUL where DICOM asks for spaces can leave one inside a value.
    PostgreSQL text cannot hold U+0000: filing answered "database unavailable" there (a
    retryable failure, so the modality retried forever) while SQLite took the instance. Now
    both index it with U+FFFD in its place."""
    sessions = _seed(backend)
    ds = pydicom.dcmread(io.BytesIO(_instance(generate_uid(), generate_uid(), 1, 1)))
    ds.PatientID = "XP\x00-7"
    ds.StudyDescription = "CHEST\x00PA"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    filed = file_instance(
        buffer.getvalue(),
        store=make_store(backend),
        sessions=sessions,
        sender=_sender(sessions, "XIPING_DR"),
    )
    with sessions() as session:
        study = session.scalar(select(Study).where(Study.study_uid == filed.study_uid))
        assert study is not None and study.description == "CHEST\ufffdPA"
        patient = session.get(Patient, study.patient_pk)
        assert patient is not None and patient.patient_id == "XP\ufffd-7"


def test_values_beyond_their_columns_are_filed_on_both_backends(
    backend: Settings,
) -> None:
    """A modality may send more than a VR allows. SQLite kept such values whole; PostgreSQL
    refused the row ("value too long", "integer out of range"), and filing answered "database
    unavailable", which the modality would retry forever. Both now index a text cut to its
    column and leave out a number the column cannot hold; the stored object keeps them whole."""
    sessions = _seed(backend)
    ds = pydicom.dcmread(io.BytesIO(_instance(generate_uid(), generate_uid(), 1, 1)))
    ds.PatientID = "P" * 300
    ds.PatientName = "N" * 400
    ds.StudyDescription = "D" * 500
    ds.AccessionNumber = "A" * 100
    ds.StudyID = "S" * 100
    ds.SeriesDescription = "E" * 500
    ds.BodyPartExamined = "B" * 100
    ds.SeriesNumber = "99999999999"  # an IS of 11 digits: beyond PostgreSQL's integer
    ds.InstanceNumber = "-2147483649"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    store = make_store(backend)
    filed = file_instance(
        buffer.getvalue(), store=store, sessions=sessions, sender=_sender(sessions, "XIPING_DR")
    )
    lengths = {c.key: c.type.length for c in Study.__table__.columns if hasattr(c.type, "length")}
    with sessions() as session:
        study = session.scalar(select(Study).where(Study.study_uid == filed.study_uid))
        assert study is not None
        assert study.description == "D" * lengths["description"]
        assert study.dicom_study_id == "S" * lengths["dicom_study_id"]
        patient = session.get(Patient, study.patient_pk)
        assert patient is not None and patient.patient_id.startswith("P" * 16)
        series = session.scalar(select(Series).where(Series.series_uid == filed.series_uid))
        assert series is not None and series.series_number is None
        instance = session.scalar(
            select(Instance).where(Instance.sop_instance_uid == filed.sop_instance_uid)
        )
        assert instance is not None and instance.instance_number is None
    assert pydicom.dcmread(io.BytesIO(store.get(filed.object_key))).PatientID == "P" * 300
