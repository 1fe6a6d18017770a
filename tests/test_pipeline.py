"""Study completion and processing: sweep → process_study → index, preview, validate, route.

Instances are filed through the real ingest door (``file_instance``) as the demo DR of 西坪镇卫生院
(``XIPING_DR``); the clock is moved instead of sleeping through the quiet period; the Celery task
runs in-process (``Task.apply``: the same code a worker runs, without a broker).
"""

from __future__ import annotations

import io
import threading
from datetime import timedelta
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from remote_dx import pipeline, tasks
from remote_dx.core import clock
from remote_dx.core.models import (
    Device,
    Institution,
    InstitutionLevel,
    Priority,
    Study,
    StudyStatus,
    TaskRun,
    WorklistItem,
)
from remote_dx.core.settings import Settings
from remote_dx.ingest.instance import Sender, file_instance
from remote_dx.ingest.study import sweep_ready_studies
from remote_dx.routing.route import decide
from remote_dx.storage.factory import get_store

DX_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
COUNTY = "西峡县人民医院"


# --- generated instances (shared with the other task tests) -----------------------------------


def make_dx(
    study_uid: str,
    *,
    series_uid: str | None = None,
    size: int = 256,
    instance_number: int = 1,
    patient_id: str = "XP-0001",
    patient_name: str | None = "Wang^Xiaoming",
    study_date: str | None = "20250301",
    monochrome1: bool = False,
    extra: dict[str, object] | None = None,
) -> Dataset:
    """A chest DX, 16-bit (12 stored), a bright disc on a ramp so windowing has work to do."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = DX_SOP_CLASS
    sop_uid = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.SOPClassUID = DX_SOP_CLASS
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid or generate_uid()
    if patient_name is not None:
        ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19580312"
    ds.PatientSex = "M"
    if study_date is not None:
        ds.StudyDate = study_date
    ds.StudyTime = "093000"
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.AccessionNumber = "A" + study_uid[-6:]
    ds.StudyDescription = "Chest PA"
    ds.Modality = "DX"
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance_number
    ds.BodyPartExamined = "CHEST"
    ds.Manufacturer = "remote_dx tests"
    y, x = np.mgrid[0:size, 0:size]
    disc = ((x - size / 2) ** 2 + (y - size / 2) ** 2) < (size / 3) ** 2
    pixels = (x * 8 + disc * 2000).astype(np.uint16)
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    for key, value in (extra or {}).items():
        setattr(ds, key, value)
    return ds


def part10(ds: Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def sender_for(sessions: sessionmaker[Session], ae_title: str = "XIPING_DR") -> Sender:
    with sessions() as session:
        device = session.scalar(select(Device).where(Device.ae_title == ae_title))
        assert device is not None, ae_title
        return Sender.of(device)


def file(
    settings: Settings, sessions: sessionmaker[Session], data: bytes, ae_title: str = "XIPING_DR"
) -> None:
    file_instance(
        data, store=get_store(settings), sessions=sessions, sender=sender_for(sessions, ae_title)
    )


def local_testdata(name: str) -> Path:
    """A pydicom test file that is installed here; never downloads (skip otherwise)."""
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom test file {name} is not installed locally")
    return Path(path)


def quiet_over(settings: Settings) -> None:
    clock.advance(timedelta(seconds=settings.quiet_seconds + 0.5))


def run_task(study_uid: str) -> dict:
    """Run the Celery task in this process, as a worker would (no broker)."""
    result = tasks.process_study.apply(args=[study_uid])
    assert result.successful(), result.traceback
    # .result, not .get(): .get() refuses to run once a worker has run in this process.
    return result.result


@pytest.fixture
def worker_settings(settings: Settings) -> Settings:
    tasks.configure(settings)
    return settings


def study_row(sessions: sessionmaker[Session], study_uid: str) -> Study:
    with sessions() as session:
        study = session.scalar(select(Study).where(Study.study_uid == study_uid))
        assert study is not None
        _ = study.patient, study.worklist_item
        if study.worklist_item is not None:
            _ = study.worklist_item.pool
        return study


# --- tests ---------------------------------------------------------------------------------------


def test_dx_study_is_swept_once_processed_and_routed_to_county(
    worker_settings: Settings, db: sessionmaker[Session]
) -> None:
    settings = worker_settings
    study_uid = generate_uid()
    series_uid = generate_uid()
    for number in (1, 2):
        file(
            settings, db, part10(make_dx(study_uid, series_uid=series_uid, instance_number=number))
        )

    assert sweep_ready_studies(db, quiet_seconds=settings.quiet_seconds) == []
    quiet_over(settings)
    assert sweep_ready_studies(db, quiet_seconds=settings.quiet_seconds) == [study_uid]
    assert sweep_ready_studies(db, quiet_seconds=settings.quiet_seconds) == []
    assert study_row(db, study_uid).status == StudyStatus.QUEUED

    assert run_task(study_uid)["result"] == "processed"

    study = study_row(db, study_uid)
    assert study.status == StudyStatus.PROCESSED
    assert study.processed_revision == study.revision == 2
    assert study.modalities == "DX"
    assert study.body_part == "CHEST"
    assert study.description == "Chest PA"
    assert study.patient.name == "Wang^Xiaoming"
    assert study.patient.sex == "M"
    assert study.validation_problems == []
    item = study.worklist_item
    assert item is not None
    assert item.pool.name == COUNTY
    assert item.priority == Priority.ROUTINE
    assert item.due_at == study.received_at + timedelta(hours=24)
    assert item.routing_rule == "lead-hospital/imaging/routine(default)"

    png = get_store(settings).get(study.preview_key or "")
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and max(image.size) <= 512
    pixels = np.asarray(image)
    # The bright disc in the middle must come out brighter than the dark left edge.
    assert pixels[pixels.shape[0] // 2, pixels.shape[1] // 2] > pixels[pixels.shape[0] // 2, 2]

    with db() as session:
        run = session.scalar(select(TaskRun))
        assert run is not None
        assert (run.status, run.attempts, run.error) == ("succeeded", 1, None)


def test_large_16_bit_dx_preview_is_downscaled_and_monochrome1_inverted(
    worker_settings: Settings, db: sessionmaker[Session]
) -> None:
    study_uid = generate_uid()
    file(worker_settings, db, part10(make_dx(study_uid, size=2048, monochrome1=True)))
    quiet_over(worker_settings)
    sweep_ready_studies(db, quiet_seconds=worker_settings.quiet_seconds)
    run_task(study_uid)
    study = study_row(db, study_uid)
    image = Image.open(io.BytesIO(get_store(worker_settings).get(study.preview_key or "")))
    assert image.size == (512, 512) and image.mode == "L"
    pixels = np.asarray(image)
    # MONOCHROME1: high values are dark, so the disc is darker than the left edge.
    assert pixels[256, 256] < pixels[256, 2]


@pytest.mark.parametrize(
    "name",
    [
        "JPEG2000.dcm",
        "MR_small_RLE.dcm",
        "US1_J2KR.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "SC_rgb_jpeg_dcmtk.dcm",
    ],
)
def test_compressed_instances_get_a_preview(
    worker_settings: Settings, db: sessionmaker[Session], name: str
) -> None:
    data = local_testdata(name).read_bytes()
    study_uid = str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).StudyInstanceUID)
    file(worker_settings, db, data)
    quiet_over(worker_settings)
    sweep_ready_studies(db, quiet_seconds=worker_settings.quiet_seconds)
    assert run_task(study_uid)["result"] == "processed"
    study = study_row(db, study_uid)
    assert study.preview_key == f"previews/{study_uid}.png"
    image = Image.open(io.BytesIO(get_store(worker_settings).get(study.preview_key)))
    image.load()
    assert 0 < max(image.size) <= 512
    assert np.asarray(image).std() > 5, "the preview is a flat image"
    assert not any("preview" in p.lower() for p in study.validation_problems)
    assert study.worklist_item is not None and study.worklist_item.pool.name == COUNTY


def test_processing_twice_changes_nothing(
    worker_settings: Settings, db: sessionmaker[Session]
) -> None:
    settings = worker_settings
    study_uid = generate_uid()
    file(settings, db, part10(make_dx(study_uid)))
    quiet_over(settings)
    sweep_ready_studies(db, quiet_seconds=settings.quiet_seconds)
    run_task(study_uid)
    first = study_row(db, study_uid)
    first_png = get_store(settings).get(first.preview_key or "")

    # A duplicate delivery of the message is a no-op …
    assert run_task(study_uid)["result"] == "skipped"
    # … and even forcing the whole pipeline again rewrites the same things in place.
    clock.advance(timedelta(minutes=5))
    outcome = pipeline.process_study(study_uid, sessions=db, store=get_store(settings), force=True)
    assert outcome.result == "processed"
    again = study_row(db, study_uid)
    with db() as session:
        assert session.scalar(select(func.count()).select_from(WorklistItem)) == 1
    assert again.worklist_item is not None and first.worklist_item is not None
    assert again.worklist_item.id == first.worklist_item.id
    assert again.worklist_item.due_at == first.worklist_item.due_at
    assert again.worklist_item.routed_at == first.worklist_item.routed_at
    assert again.revision == first.revision and again.status == StudyStatus.PROCESSED
    assert get_store(settings).get(again.preview_key or "") == first_png


def test_instance_arriving_during_processing_leaves_study_receiving(
    worker_settings: Settings, db: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = worker_settings
    study_uid = generate_uid()
    series_uid = generate_uid()
    file(settings, db, part10(make_dx(study_uid, series_uid=series_uid)))
    quiet_over(settings)
    assert sweep_ready_studies(db, quiet_seconds=settings.quiet_seconds) == [study_uid]

    real_render = pipeline.render_preview

    def render_while_a_late_instance_arrives(ds: Dataset) -> bytes:
        file(settings, db, part10(make_dx(study_uid, series_uid=series_uid, instance_number=2)))
        return real_render(ds)

    monkeypatch.setattr(pipeline, "render_preview", render_while_a_late_instance_arrives)
    assert run_task(study_uid)["result"] == "superseded"
    monkeypatch.setattr(pipeline, "render_preview", real_render)

    study = study_row(db, study_uid)
    assert study.status == StudyStatus.RECEIVING
    assert study.revision == 2 and study.processed_revision is None
    assert study.worklist_item is None  # nobody reads half a study

    # The next quiet period queues it again and the whole study is processed.
    assert sweep_ready_studies(db, quiet_seconds=settings.quiet_seconds) == []
    quiet_over(settings)
    assert sweep_ready_studies(db, quiet_seconds=settings.quiet_seconds) == [study_uid]
    assert run_task(study_uid)["result"] == "processed"
    study = study_row(db, study_uid)
    assert (study.status, study.processed_revision, study.num_instances) == (
        StudyStatus.PROCESSED,
        2,
        2,
    )
    assert study.worklist_item is not None


def test_missing_tags_are_reported_but_the_study_is_still_routed(
    worker_settings: Settings, db: sessionmaker[Session]
) -> None:
    study_uid = generate_uid()
    series_uid = generate_uid()
    file(
        worker_settings,
        db,
        part10(make_dx(study_uid, series_uid=series_uid, patient_name=None, study_date=None)),
    )
    file(
        worker_settings,
        db,
        part10(
            make_dx(
                study_uid,
                series_uid=series_uid,
                instance_number=2,
                patient_id="XP-9999",
                study_date=None,
            )
        ),
    )
    quiet_over(worker_settings)
    sweep_ready_studies(db, quiet_seconds=worker_settings.quiet_seconds)
    run_task(study_uid)
    study = study_row(db, study_uid)
    problems = "\n".join(study.validation_problems)
    assert "Patient's Name (0010,0010) is missing [Type 2, Patient Module (PS3.3 C.7.1.1)]" in (
        problems
    )
    assert "Study Date (0008,0020) is missing" in problems
    assert "Patient ID (0010,0020) differs between the study's instances: XP-0001, XP-9999" in (
        problems
    )
    assert study.status == StudyStatus.PROCESSED
    assert study.worklist_item is not None and study.worklist_item.pool.name == COUNTY


def test_stat_ecg_from_the_ecg_cart_is_due_in_ten_minutes(
    worker_settings: Settings, db: sessionmaker[Session]
) -> None:
    ds = pydicom.dcmread(local_testdata("waveform_ecg.dcm"))
    ds.RequestedProcedurePriority = "STAT"
    study_uid = str(ds.StudyInstanceUID)
    file(worker_settings, db, part10(ds), ae_title="XIPING_ECG")
    quiet_over(worker_settings)
    sweep_ready_studies(db, quiet_seconds=worker_settings.quiet_seconds)
    run_task(study_uid)
    study = study_row(db, study_uid)
    item = study.worklist_item
    assert item is not None
    assert (item.pool.name, item.priority) == (COUNTY, Priority.STAT)
    assert item.due_at == study.received_at + timedelta(minutes=10)
    assert item.routing_rule == "lead-hospital/ecg/stat(header)"
    assert study.modalities == "ECG"
    image = Image.open(io.BytesIO(get_store(worker_settings).get(study.preview_key or "")))
    assert image.format == "PNG" and image.size[0] == 512


@pytest.mark.parametrize(
    ("modality", "priority", "due"),
    [
        ("ECG", None, timedelta(hours=2)),
        ("ECG", Priority.STAT, timedelta(minutes=10)),
        ("DX", None, timedelta(hours=24)),
        ("CT", Priority.STAT, timedelta(minutes=30)),
    ],
)
def test_sla_due_times(modality: str, priority: Priority | None, due: timedelta) -> None:
    county = Institution(id=3, code="C", name=COUNTY, level=InstitutionLevel.COUNTY)
    township = Institution(
        id=4, code="T", name="西坪镇卫生院", level=InstitutionLevel.TOWNSHIP, parent=county
    )
    received = clock.utcnow()
    decision = decide(township, modalities=[modality], received_at=received, priority=priority)
    assert decision.pool is county
    assert decision.due_at - received == due
    # A study taken at the county hospital itself is read in its own pool.
    own = decide(county, modalities=[modality], received_at=received, priority=priority)
    assert own.pool is county and own.rule.startswith("own-pool/")


def test_concurrent_sweepers_queue_each_study_once(
    settings: Settings, db: sessionmaker[Session]
) -> None:
    study_uids = [generate_uid() for _ in range(12)]
    for uid in study_uids:
        file(settings, db, part10(make_dx(uid, size=16)))
    quiet_over(settings)
    results: list[list[str]] = []
    barrier = threading.Barrier(4)

    def sweeper() -> None:
        barrier.wait()
        results.append(sweep_ready_studies(db, quiet_seconds=settings.quiet_seconds))

    threads = [threading.Thread(target=sweeper) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    queued = [uid for result in results for uid in result]
    assert sorted(queued) == sorted(study_uids)  # every study once, none twice
