"""An ECG uploaded over HTTP: read → check → keep the originals → DICOM 12-lead → file it.

The parts of one upload (a DICOM waveform, a WFDB ``.hea`` + ``.dat`` pair, an HL7 aECG, Philips
Sierra or GE MUSE XML, a CSV) are read into the internal :class:`~remote_dx.ecg.model.ECG`,
checked, and written as a DICOM ECG waveform object (PS3.3 A.34.3) that goes through the one
filing door (:func:`~remote_dx.ingest.instance.file_instance`), so HTTP uploads, C-STORE and
every later step (processing, analysis, routing) see one kind of object. The uploaded files are
also kept as they came under ``ecg-originals/{study_uid}/`` (the cart's own file is the record).

UIDs are derived from the upload's content (files, patient fields, origin): a client that resends
an upload whose answer it lost gets the same study back instead of a second copy. A DICOM upload
keeps its own Study Instance UID, so the study matches what the cart recorded.

Errors: :class:`UploadRejected` carries the HTTP status the sender should see (413 too large,
415 not an ECG format we read, 422 an ECG we cannot accept, naming what is wrong);
StorageUnavailable / DatabaseUnavailable mean "retry later" (503).
"""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass, replace
from datetime import date, datetime
from pathlib import PurePath

import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from sqlalchemy.orm import Session, sessionmaker

from remote_dx.core.errors import InvalidInstance
from remote_dx.core.models import Priority
from remote_dx.ecg.dicom_writer import ecg_to_dataset
from remote_dx.ecg.model import ECG, ECGError, PatientInfo
from remote_dx.ecg.readers import detect_format, read_ecg
from remote_dx.ingest.instance import Sender, file_instance
from remote_dx.storage.base import ObjectStore

MAX_UPLOAD_BYTES = 64 * 1024 * 1024  # a 24 h 12-lead Holter at 500 Hz in WFDB is ~520 MB; carts
# send resting ECGs of 10 s (20–500 kB), so 64 MB leaves room for long rhythm strips.
ORIGINALS_PREFIX = "ecg-originals"

# Requested Procedure Priority (0040,1003) defined terms (PS3.3 C.4.11); routing reads it back.
_DICOM_PRIORITY = {Priority.STAT: "STAT", Priority.URGENT: "HIGH", Priority.ROUTINE: "ROUTINE"}
_SEX = {"M": "M", "F": "F", "O": "O", "MALE": "M", "FEMALE": "F", "男": "M", "女": "F"}
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


class UploadRejected(Exception):
    """The upload cannot be accepted; ``status`` is the HTTP status, ``str(exc)`` the reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class UploadForm:
    """The optional form fields of ``POST /api/v1/ecg`` (the form wins over the file)."""

    patient_id: str | None = None
    patient_name: str | None = None
    patient_sex: str | None = None
    patient_birth_date: str | None = None
    priority: Priority | None = None
    sampling_rate: float | None = None
    units: str | None = None


@dataclass(frozen=True)
class UploadedECG:
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    format: str
    duplicate: bool
    n_leads: int
    sampling_rate: float
    duration_s: float


def upload_ecg(
    files: list[tuple[str, bytes]],
    form: UploadForm,
    *,
    store: ObjectStore,
    sessions: sessionmaker[Session],
    sender: Sender,
    institution_name: str | None = None,
) -> UploadedECG:
    """Accept one uploaded ECG; return only once it is durably stored and indexed.

    Raises :class:`UploadRejected` (4xx), StorageUnavailable or DatabaseUnavailable (503).
    """
    total = sum(len(data) for _, data in files)
    if total > MAX_UPLOAD_BYTES:
        raise UploadRejected(
            413, f"upload is {total} bytes; at most {MAX_UPLOAD_BYTES} bytes per ECG"
        )
    fmt = _format_of(files)
    try:
        ecg = read_ecg(files, sampling_rate=form.sampling_rate, units=form.units)
        ecg.validate()
    except ECGError as exc:
        raise UploadRejected(422, str(exc)) from exc

    patient = _patient(ecg, form)
    study_uid, series_uid, sop_uid = _uids(files, form, sender, patient, fmt)
    try:
        ds = ecg_to_dataset(
            ecg,
            study_uid=study_uid,
            series_uid=series_uid,
            sop_instance_uid=sop_uid,
            patient=patient,
            institution=institution_name,
            station_name=sender.ae_title or None,
        )
    except ECGError as exc:
        raise UploadRejected(422, str(exc)) from exc
    if form.priority is not None:
        request = Dataset()
        request.RequestedProcedurePriority = _DICOM_PRIORITY[form.priority]
        ds.RequestAttributesSequence = Sequence([request])
    data = _part10(ds)

    # Originals first: when the instance is filed (and so visible to processing) they are there.
    for name, content in files:
        store.put(original_key(study_uid, name), content)
    try:
        filed = file_instance(data, store=store, sessions=sessions, sender=sender)
    except InvalidInstance as exc:  # our own writer made something unreadable: a bug, but say so
        raise UploadRejected(422, f"the converted ECG could not be stored: {exc}") from exc
    return UploadedECG(
        study_uid=filed.study_uid,
        series_uid=filed.series_uid,
        sop_instance_uid=filed.sop_instance_uid,
        format=fmt,
        duplicate=filed.duplicate,
        n_leads=len(ecg.leads),
        sampling_rate=ecg.sampling_rate,
        duration_s=round(ecg.duration_s, 3),
    )


def original_key(study_uid: str, name: str) -> str:
    """Object key of an uploaded original (the name reduced to a safe file name)."""
    safe = _SAFE_NAME.sub("_", PurePath(name or "upload").name).strip("._") or "upload"
    return f"{ORIGINALS_PREFIX}/{study_uid}/{safe[:120]}"


def _format_of(files: list[tuple[str, bytes]]) -> str:
    """The format, or 415 when the content is no ECG format we read (422 for empty parts or
    several files that are not one WFDB record: the format may be fine, the upload is not)."""
    try:
        return detect_format(files)
    except ECGError as exc:
        names = [PurePath(n or "upload").name.lower() for n, _ in files]
        malformed = (
            not files
            or any(not data for _, data in files)
            or (len(files) > 1 and not any(n.endswith(".hea") for n in names))
        )
        raise UploadRejected(422 if malformed else 415, str(exc)) from exc


def _patient(ecg: ECG, form: UploadForm) -> PatientInfo:
    """The file's patient with the form's fields put over it; 422 when no patient ID is known
    (an ID-less ECG would be merged with every other one from the same township)."""
    patient = replace(ecg.patient)
    if form.patient_id is not None and form.patient_id.strip():
        patient.patient_id = form.patient_id.strip()
    if form.patient_name is not None and form.patient_name.strip():
        patient.name = form.patient_name.strip()
    if form.patient_sex is not None and form.patient_sex.strip():
        sex = _SEX.get(form.patient_sex.strip().upper())
        if sex is None:
            raise UploadRejected(422, f"patient_sex {form.patient_sex!r} is not one of M, F, O")
        patient.sex = sex
    if form.patient_birth_date is not None and form.patient_birth_date.strip():
        patient.birth_date = _birth_date(form.patient_birth_date.strip())
    if not patient.patient_id:
        raise UploadRejected(
            422, "no patient ID: the file carries none, so send the form field patient_id"
        )
    if len(patient.patient_id) > 64:
        raise UploadRejected(422, "patient_id is longer than 64 characters (DICOM LO)")
    if patient.age_years is None and patient.birth_date:
        patient.age_years = _age(patient.birth_date, ecg.acquired_at)
    return patient


def _birth_date(text: str) -> str:
    digits = text.replace("-", "").replace("/", "").replace(".", "")
    try:
        born = datetime.strptime(digits, "%Y%m%d").date()
    except ValueError:
        raise UploadRejected(
            422, f"patient_birth_date {text!r} is not a date (YYYYMMDD or YYYY-MM-DD)"
        ) from None
    if born > date.today() or born.year < 1880:
        raise UploadRejected(422, f"patient_birth_date {text!r} is not a plausible birth date")
    return born.strftime("%Y%m%d")


def _age(birth_date: str, acquired_at: datetime | None) -> float | None:
    try:
        born = datetime.strptime(birth_date, "%Y%m%d").date()
    except ValueError:
        return None
    on = (acquired_at or datetime.now()).date()
    years = on.year - born.year - ((on.month, on.day) < (born.month, born.day))
    return float(years) if years >= 0 else None


def _uids(
    files: list[tuple[str, bytes]],
    form: UploadForm,
    sender: Sender,
    patient: PatientInfo,
    fmt: str,
) -> tuple[str, str, str]:
    """(study, series, SOP instance) UIDs, the same for the same upload from the same origin."""
    digest = hashlib.sha256()
    digest.update(f"{sender.institution_code}\0{fmt}\0".encode())
    for name, data in sorted(files, key=lambda part: PurePath(part[0] or "").name):
        digest.update(PurePath(name or "").name.encode())
        digest.update(hashlib.sha256(data).digest())
    for value in (patient.patient_id, patient.name, patient.sex, patient.birth_date, form.priority):
        digest.update(f"\0{value or ''}".encode())
    seed = digest.hexdigest()

    study_uid = None
    if fmt == "dicom":
        try:
            source = pydicom.dcmread(
                io.BytesIO(files[0][1]), stop_before_pixels=True, specific_tags=["StudyInstanceUID"]
            )
            study_uid = str(source.get("StudyInstanceUID") or "") or None
        except Exception:  # the reader accepted it; a missing UID just means we make one
            study_uid = None
    return (
        study_uid or _uid(seed, "study"),
        _uid(seed, "series"),
        _uid(seed, "instance"),
    )


def _uid(seed: str, what: str) -> str:
    """A UUID-derived UID (PS3.5 §B.2: "2.25." + the 128-bit value in decimal), the value taken
    from the upload's digest instead of a random UUID."""
    value = int.from_bytes(hashlib.sha256(f"{seed}/{what}".encode()).digest()[:16], "big")
    return f"2.25.{value}"


def _part10(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
