"""Decoded renditions of large compressed images, kept at processing for the reader's first look."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
from sqlalchemy.orm import Session, sessionmaker

from remote_dx.core.settings import Settings
from remote_dx.dicomweb import renditions, wado
from remote_dx.dicomweb.access import InstanceRef
from remote_dx.ingest.instance import object_key
from remote_dx.ingest.study import sweep_ready_studies
from remote_dx.storage.factory import get_store
from remote_dx.storage.file_store import FileStore
from tests.support import SAMPLE_STUDIES
from tests.test_pipeline import file, make_dx, part10, quiet_over, run_task, worker_settings

__all__ = ["worker_settings"]  # the fixture, imported for this module's tests

J2K_DX = SAMPLE_STUDIES / "imaging" / "dx_chest_pa_li_xiuying_iso2022_ir58.dcm"


def _object_key(ds: pydicom.Dataset) -> str:
    return object_key(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))


def _process(settings: Settings, db: sessionmaker[Session], data: bytes) -> None:
    study_uid = str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).StudyInstanceUID)
    file(settings, db, data)
    quiet_over(settings)
    sweep_ready_studies(db, quiet_seconds=settings.quiet_seconds)
    assert run_task(study_uid)["result"] == "processed"


def test_large_jpeg2000_dx_is_kept_decoded_bit_for_bit(
    worker_settings: Settings, db: sessionmaker[Session]
) -> None:
    data = J2K_DX.read_bytes()
    stored = pydicom.dcmread(io.BytesIO(data))
    assert stored.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.90"
    _process(worker_settings, db, data)

    key = _object_key(stored)
    kept = renditions.get(get_store(worker_settings), key, 1)
    assert kept is not None, "no rendition was kept for a 2048² JPEG 2000 DX"
    expected = stored.pixel_array.astype(stored.pixel_array.dtype.newbyteorder("<"))
    assert kept == expected.tobytes(), "the rendition is not the lossless decode of the frame"
    assert len(kept) == int(stored.Rows) * int(stored.Columns) * 2


def test_small_or_uncompressed_images_get_no_rendition(
    worker_settings: Settings, db: sessionmaker[Session]
) -> None:
    native = make_dx(pydicom.uid.generate_uid(), size=1024)  # large but already native
    _process(worker_settings, db, part10(native))
    key = _object_key(native)
    assert renditions.get(get_store(worker_settings), key, 1) is None
    assert not [k for k in get_store(worker_settings).list() if k.startswith("renditions/")]


def test_an_undecodable_image_still_processes_without_a_rendition(
    worker_settings: Settings, db: sessionmaker[Session]
) -> None:
    ds = pydicom.dcmread(J2K_DX)
    ds.StudyInstanceUID = pydicom.uid.generate_uid()
    ds.SeriesInstanceUID = pydicom.uid.generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    # One fragment of JPEG 2000 whose codestream is garbage after the marker.
    ds.PixelData = pydicom.encaps.encapsulate([b"\xff\x4f\xff\x51" + bytes(range(200)) * 4])
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    _process(worker_settings, db, out.getvalue())
    key = _object_key(ds)
    assert renditions.get(get_store(worker_settings), key, 1) is None


def test_rendition_keys_sit_outside_the_instance_prefix() -> None:
    key = renditions.rendition_key("dicom/ab/1.2.3", 1)
    assert key == "renditions/dicom/ab/1.2.3/1.le"
    assert not key.startswith("dicom/")


def test_get_answers_none_for_a_missing_rendition(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    assert renditions.get(store, "dicom/1.2/1.2.3/1.2.3.4.dcm", 1) is None
    store.put(renditions.rendition_key("dicom/1.2/1.2.3/1.2.3.4.dcm", 1), b"\x01\x00")
    assert renditions.get(store, "dicom/1.2/1.2.3/1.2.3.4.dcm", 1) == b"\x01\x00"


UNCOMPRESSED = (
    'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1'
)


def _j2k_ref(key: str) -> InstanceRef:
    return InstanceRef("1", "2", "3", "1.2", "1.2.840.10008.1.2.4.90", key, None, 1)


def test_wado_frame_asked_uncompressed_is_read_from_the_rendition(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FileStore(tmp_path)
    key = "dicom/1/2/3.dcm"
    store.put(key, J2K_DX.read_bytes())
    expected = pydicom.dcmread(J2K_DX).pixel_array.astype("<u2").tobytes()
    plan = wado.frame_plan(UNCOMPRESSED, "1.2.840.10008.1.2.4.90")
    assert plan.transcode

    # No rendition yet: decoded on request, and kept for the next reader.
    assert wado.stored_frames(store, _j2k_ref(key), [1], plan) == [expected]
    assert renditions.get(store, key, 1) == expected

    # Now kept: the answer comes without any decoding.
    def no_decode(ds: pydicom.Dataset, index: int) -> bytes:
        raise AssertionError("decoded although a rendition is kept")

    monkeypatch.setattr(renditions, "decoded_frame", no_decode)
    assert wado.stored_frames(store, _j2k_ref(key), [1], plan) == [expected]

    # As stored (transfer-syntax=*): the JPEG 2000 codestream, never the rendition.
    as_stored = wado.frame_plan(
        'multipart/related; type="application/octet-stream"; transfer-syntax=*',
        "1.2.840.10008.1.2.4.90",
    )
    (codestream,) = wado.stored_frames(store, _j2k_ref(key), [1], as_stored)
    assert codestream[:4] == b"\xff\x4f\xff\x51" and codestream != expected
