"""Filing one received instance: parse → object store → index, in that order.

This is the single door every way in (C-STORE, STOW-RS, ECG upload) goes through, so the
"nothing lost" invariant lives in one place: the caller may acknowledge the instance only when
:func:`file_instance` returns, by which time the bytes are durable in the object store and the
index row is committed. Re-sending the same SOP Instance UID is a no-op that succeeds.
"""

from __future__ import annotations

import hashlib
import io
import logging
import struct
import zlib
from dataclasses import dataclass

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from remote_dx.core.clock import utcnow
from remote_dx.core.errors import DatabaseUnavailable, InvalidInstance
from remote_dx.core.models import (
    Device,
    Instance,
    Patient,
    Series,
    Study,
    StudyStatus,
)
from remote_dx.ingest.charset import decode_element
from remote_dx.ingest.part10 import check_structure
from remote_dx.storage.base import ObjectStore

log = logging.getLogger(__name__)

_REQUIRED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
# Objects with Rows/Columns whose samples are not in Pixel Data (parametric maps, spectroscopy).
_OTHER_PIXEL_KEYWORDS = ("FloatPixelData", "DoubleFloatPixelData", "SpectroscopyData")


@dataclass(frozen=True)
class Sender:
    """Who sent an instance: the registered device and the institution it belongs to."""

    device_id: int
    institution_id: int
    institution_code: str
    ae_title: str

    @classmethod
    def of(cls, device: Device) -> Sender:
        return cls(device.id, device.institution_id, device.institution.code, device.ae_title)


@dataclass(frozen=True)
class FiledInstance:
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    object_key: str
    duplicate: bool


def object_key(study_uid: str, series_uid: str, sop_instance_uid: str) -> str:
    return f"dicom/{study_uid}/{series_uid}/{sop_instance_uid}.dcm"


def parse_part10(data: bytes) -> Dataset:
    """Parse a DICOM Part 10 file (PS3.10 §7.1) and check it is a whole, usable instance.

    pydicom accepts a file cut short without complaint, so the byte stream's structure is
    walked first (:func:`~remote_dx.ingest.part10.check_structure`: every element, sequence item
    and Pixel Data fragment must lie wholly inside the data) and native pixel data is checked
    against the image's own geometry. Top-level values are decoded once so a malformed one is
    found here; nested values are left to their readers (decoding all of them cost ~25 ms per
    12-lead ECG, more than the rest of filing).
    """
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        transfer_syntax = ds.file_meta.get("TransferSyntaxUID")
        if not transfer_syntax:
            raise InvalidInstance("no Transfer Syntax UID in the file meta information")
        check_structure(data, str(transfer_syntax))
        for keyword in _REQUIRED_UIDS:
            value = ds.get(keyword)
            if not value or not UID(str(value)).is_valid:
                raise InvalidInstance(f"missing or invalid {keyword}")
        for element in ds:
            _ = element.value
    except InvalidInstance:
        raise
    except (
        InvalidDicomError,
        EOFError,
        ValueError,
        TypeError,
        KeyError,
        OSError,
        NotImplementedError,
        AttributeError,
        IndexError,
        struct.error,
        zlib.error,
    ) as exc:
        raise InvalidInstance(f"not a readable DICOM instance: {exc}") from exc
    _check_pixel_data(ds)
    return ds


def _check_pixel_data(ds: Dataset) -> None:
    if "PixelData" not in ds:
        if "Rows" in ds and not any(keyword in ds for keyword in _OTHER_PIXEL_KEYWORDS):
            # A stream cut exactly between two elements is well formed but has lost its pixels.
            raise InvalidInstance("image attributes present but no Pixel Data (truncated?)")
        return
    transfer_syntax = ds.file_meta.get("TransferSyntaxUID")
    value = ds.PixelData
    if transfer_syntax is not None and UID(transfer_syntax).is_encapsulated:
        # PS3.5 A.4: an Item tag, then a Sequence Delimitation Item at the very end.
        if not value.startswith(b"\xfe\xff\x00\xe0"):
            raise InvalidInstance("encapsulated Pixel Data does not start with an item")
        return
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        bits = int(ds.BitsAllocated)
        samples = int(ds.get("SamplesPerPixel", 1))
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError) as exc:
        raise InvalidInstance(f"image geometry incomplete: {exc}") from exc
    expected = rows * columns * samples * frames * bits
    if str(ds.get("PhotometricInterpretation", "")) == "YBR_FULL_422":
        # Native 4:2:2 keeps two luminance samples per chroma pair (PS3.3 C.7.6.3.1.2).
        expected = expected * 2 // 3
    expected = (expected + 7) // 8
    if len(value) < expected:
        raise InvalidInstance(
            f"Pixel Data truncated: {len(value)} bytes, {expected} expected for "
            f"{frames}×{rows}×{columns}×{samples} at {bits} bits"
        )


def file_instance(
    data: bytes,
    *,
    store: ObjectStore,
    sessions: sessionmaker[Session],
    sender: Sender,
) -> FiledInstance:
    """Store and index one Part 10 instance; return only when both are durable.

    Raises InvalidInstance (reject, don't retry), StorageUnavailable or DatabaseUnavailable
    (retry later).
    """
    ds = parse_part10(data)
    study_uid = str(ds.StudyInstanceUID)
    series_uid = str(ds.SeriesInstanceUID)
    sop_uid = str(ds.SOPInstanceUID)
    key = object_key(study_uid, series_uid, sop_uid)

    try:
        with sessions() as session:
            if session.scalar(select(Instance.id).where(Instance.sop_instance_uid == sop_uid)):
                return FiledInstance(study_uid, series_uid, sop_uid, key, duplicate=True)
    except OperationalError as exc:
        raise DatabaseUnavailable(str(exc)) from exc

    store.put(key, data, content_type="application/dicom")

    for attempt in range(5):
        try:
            with sessions() as session, session.begin():
                duplicate = _index(session, ds, data, key, sender)
            return FiledInstance(study_uid, series_uid, sop_uid, key, duplicate=duplicate)
        except IntegrityError:
            # Another association created the same patient/study/series row first.
            if attempt == 4:
                raise
        except (OperationalError, SQLAlchemyError) as exc:
            raise DatabaseUnavailable(str(exc)) from exc
    raise AssertionError("unreachable")


def _index(
    session: Session,
    ds: Dataset,
    data: bytes,
    key: str,
    sender: Sender,
) -> bool:
    sop_uid = str(ds.SOPInstanceUID)
    if session.scalar(select(Instance.id).where(Instance.sop_instance_uid == sop_uid)):
        return True
    now = utcnow()

    study = session.scalar(select(Study).where(Study.study_uid == str(ds.StudyInstanceUID)))
    if study is None:
        issuer = str(ds.get("IssuerOfPatientID") or "") or sender.institution_code
        patient_id = str(ds.get("PatientID") or "")
        patient = session.scalar(
            select(Patient).where(Patient.issuer == issuer, Patient.patient_id == patient_id)
        )
        if patient is None:
            patient = Patient(issuer=issuer, patient_id=patient_id)
            session.add(patient)
        patient.name = decode_element(ds, "PatientName") or patient.name
        patient.birth_date = str(ds.get("PatientBirthDate") or "") or patient.birth_date
        patient.sex = str(ds.get("PatientSex") or "") or patient.sex
        study = Study(
            study_uid=str(ds.StudyInstanceUID),
            patient=patient,
            origin_id=sender.institution_id,
            device_id=sender.device_id,
            accession_number=str(ds.get("AccessionNumber") or "") or None,
            study_date=str(ds.get("StudyDate") or "") or None,
            study_time=str(ds.get("StudyTime") or "") or None,
            description=decode_element(ds, "StudyDescription"),
            received_at=now,
            last_received_at=now,
            revision=0,
            num_instances=0,
        )
        session.add(study)
        session.flush()

    series = session.scalar(select(Series).where(Series.series_uid == str(ds.SeriesInstanceUID)))
    if series is None:
        series = Series(
            series_uid=str(ds.SeriesInstanceUID),
            study_pk=study.id,
            modality=str(ds.get("Modality") or "") or None,
            series_number=_int(ds.get("SeriesNumber")),
            description=decode_element(ds, "SeriesDescription"),
            body_part=str(ds.get("BodyPartExamined") or "") or None,
        )
        session.add(series)
        session.flush()

    session.add(
        Instance(
            sop_instance_uid=sop_uid,
            series_pk=series.id,
            sop_class_uid=str(ds.SOPClassUID),
            transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
            instance_number=_int(ds.get("InstanceNumber")),
            object_key=key,
            size_bytes=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            calling_ae=sender.ae_title,
            received_at=now,
        )
    )
    # A new instance re-opens the study: it is processed again after the next quiet period.
    # SQL-side increments: concurrent associations of one study must not lose a count.
    study.num_instances = Study.num_instances + 1  # type: ignore[assignment]
    study.revision = Study.revision + 1  # type: ignore[assignment]
    study.last_received_at = now
    study.status = StudyStatus.RECEIVING
    return False


def _int(value: object) -> int | None:
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
