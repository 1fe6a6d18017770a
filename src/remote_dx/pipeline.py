"""Processing one ready study: index → preview → validate → route, then publish.

Everything is read from the object store (never from the receiver), so any worker on any host can
process any study. The work is done outside database transactions (a 2048×2048 preview must not
hold SQLite's write lock against the receiver); the results are then written in one short
transaction guarded by a compare-and-set on the study's revision:

- revision unchanged → the study becomes PROCESSED (``processed_revision`` = that revision), its
  index fields, preview key, validation problems and worklist item are written together;
- revision changed (an instance arrived meanwhile; ingest set the study back to RECEIVING) →
  nothing is written, the study stays RECEIVING and the sweep queues it again after the next
  quiet period. No reader ever sees a half-received study as processed.

Re-running on a processed study changes nothing: the preview is overwritten with the same bytes
and the worklist item is updated in place (one per study, unique in the schema).

ECG studies (an instance of an ECG waveform SOP class, however it came: C-STORE or HTTP upload)
also get the preliminary analysis (:mod:`remote_dx.ecg.service`): run before the transaction,
stored in it. A critical finding makes the item STAT (due at received + the STAT ECG SLA) with
a critical alert for the routed pool; a technically unsatisfactory tracing leaves a re-acquire
notice for the origin. An analysis that fails is recorded as failed and the study is routed
all the same.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

import pydicom
from pydicom.dataset import Dataset
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from remote_dx.core.charset import charsets_of, decode_element
from remote_dx.core.clock import utcnow
from remote_dx.core.models import (
    Instance,
    Patient,
    Priority,
    Series,
    Study,
    StudyStatus,
    TaskRun,
)
from remote_dx.dicomweb import renditions
from remote_dx.dicomweb.metadata import precompute_study as precompute_metadata
from remote_dx.ecg.service import ECGOutcome, analyse_waveform, is_ecg_sop_class, record_analysis
from remote_dx.imaging.preview import PreviewError, has_pixels, has_waveform, render_preview
from remote_dx.ingest.validation import validate_study
from remote_dx.routing.route import header_patient_age, header_priority, route_study
from remote_dx.storage.base import ObjectStore

log = logging.getLogger(__name__)


class StudyNotFound(LookupError):
    """No study with that UID in the index."""


@dataclass
class ProcessOutcome:
    study_uid: str
    result: Literal["processed", "skipped", "superseded"]
    revision: int
    preview_key: str | None = None
    problems: list[str] = field(default_factory=list)
    worklist_item_id: int | None = None
    reason: str = ""
    ecg: ECGOutcome | None = None


@dataclass(frozen=True)
class _InstanceRef:
    object_key: str
    series_number: int | None
    instance_number: int | None
    series_pk: int


def preview_key(study_uid: str) -> str:
    return f"previews/{study_uid}.png"


def needs_processing(sessions: sessionmaker[Session], study_uid: str) -> tuple[bool, str]:
    """Whether a delivered task has anything to do, and why not.

    A RECEIVING study is skipped (new instances came after it was queued; the sweep will queue
    it again), as is a PROCESSED one whose processed revision is current (a duplicate delivery).
    """
    with sessions() as session:
        row = session.execute(
            select(Study.status, Study.revision, Study.processed_revision).where(
                Study.study_uid == study_uid
            )
        ).first()
    if row is None:
        raise StudyNotFound(study_uid)
    status, revision, processed_revision = row
    if status == StudyStatus.RECEIVING:
        return False, "instances still arriving; the sweep will queue it again"
    if status == StudyStatus.PROCESSED and processed_revision == revision:
        return False, f"already processed at revision {revision}"
    return True, ""


def process_study(
    study_uid: str,
    *,
    sessions: sessionmaker[Session],
    store: ObjectStore,
    now: datetime | None = None,
    force: bool = False,
    task_name: str | None = None,
) -> ProcessOutcome:
    """Index, preview, validate and route one study (see the module docstring).

    With ``task_name``, that task's TaskRun is marked succeeded in the publishing transaction,
    so a PROCESSED study always has a succeeded run.

    Raises StudyNotFound, StorageUnavailable / DatabaseUnavailable / OperationalError
    (transient: retry) and ObjectNotFound (an indexed instance is missing from the store).
    """
    with sessions() as session:
        study = session.scalar(select(Study).where(Study.study_uid == study_uid))
        if study is None:
            raise StudyNotFound(study_uid)
        revision = study.revision
        if study.status == StudyStatus.RECEIVING:
            return ProcessOutcome(study_uid, "skipped", revision, reason="still receiving")
        if (
            not force
            and study.status == StudyStatus.PROCESSED
            and study.processed_revision == revision
        ):
            return ProcessOutcome(study_uid, "skipped", revision, reason="already processed")
        refs = [
            _InstanceRef(key, series_number, instance_number, series_pk)
            for key, series_number, instance_number, series_pk in session.execute(
                select(
                    Instance.object_key,
                    Series.series_number,
                    Instance.instance_number,
                    Series.id,
                )
                .join(Series, Series.id == Instance.series_pk)
                .where(Series.study_pk == study.id)
                .order_by(Series.series_number, Series.id, Instance.instance_number, Instance.id)
            )
        ]

    headers: list[Dataset] = []
    ecg: ECGOutcome | None = None
    # Large compressed images' bytes, kept for their decoded renditions below (not read twice).
    held: dict[str, bytes] = {}
    for ref in refs:
        # Whole objects come back from the store; parsing stops before the pixels to save time.
        data = store.get(ref.object_key)
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        headers.append(ds)
        if renditions.worth_keeping(ds, header_only=True):
            held[ref.object_key] = data
        if ecg is None and is_ecg_sop_class(ds.get("SOPClassUID")):
            # The first ECG waveform of the study is analysed (re-acquisitions are new studies).
            ecg = analyse_waveform(data, sop_instance_uid=str(ds.get("SOPInstanceUID", "")))
    # Index first: text is decoded from the raw bytes, before anything makes pydicom convert it.
    index = _index_fields(headers)
    problems = validate_study(headers) if headers else ["The study has no instances"]

    key: str | None = None
    preview_ds: Dataset | None = None
    chosen = _preview_instance(refs, headers)
    if chosen is not None:
        try:
            data = held.get(chosen.object_key) or store.get(chosen.object_key)
            preview_ds = pydicom.dcmread(io.BytesIO(data))
            store.put(preview_key(study_uid), render_preview(preview_ds), content_type="image/png")
            key = preview_key(study_uid)
        except PreviewError as exc:
            problems.append(f"No preview could be made: {exc}")
    elif headers:
        problems.append("No preview: the study holds neither images nor waveforms")

    # Decoded copies of large compressed images, so a reader's first look needs no decode
    # (never fails the processing; the preview's dataset has its pixels decoded already).
    for object_key, data in held.items():
        if preview_ds is not None and chosen is not None and chosen.object_key == object_key:
            renditions.keep(store, object_key, preview_ds)
        else:
            renditions.keep(store, object_key, pydicom.dcmread(io.BytesIO(data)))
    held.clear()

    # DICOMweb metadata from the headers already read (never fails the processing).
    precompute_metadata(store, study_uid, headers)

    priority = header_priority(headers)
    priority_source = "header"
    if ecg is not None and ecg.critical:
        priority, priority_source = Priority.STAT, "ecg-critical"
    modalities = index["modalities"].split("\\") if index["modalities"] else []

    for attempt in range(2):
        try:
            return _publish(
                sessions,
                study_uid,
                revision,
                index,
                key,
                problems,
                modalities,
                priority,
                now or utcnow(),
                task_name,
                ecg,
                priority_source,
                header_patient_age(headers),
            )
        except IntegrityError:
            # A concurrent delivery inserted the worklist item first; the second pass updates it.
            if attempt == 1:
                raise
    raise AssertionError("unreachable")


def _publish(
    sessions: sessionmaker[Session],
    study_uid: str,
    revision: int,
    index: dict[str, str | None],
    key: str | None,
    problems: list[str],
    modalities: list[str],
    priority: Priority | None,
    now: datetime,
    task_name: str | None,
    ecg: ECGOutcome | None = None,
    priority_source: str = "header",
    patient_age: str | None = None,
) -> ProcessOutcome:
    with sessions() as session, session.begin():
        result = session.execute(
            update(Study)
            .where(
                Study.study_uid == study_uid,
                Study.revision == revision,
                Study.status != StudyStatus.RECEIVING,
            )
            .values(
                status=StudyStatus.PROCESSED,
                processed_revision=revision,
                processed_at=now,
                preview_key=key,
                validation_problems=problems,
                description=index["description"],
                modalities=index["modalities"],
                body_part=index["body_part"],
                character_set=index["character_set"],
            )
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            log.info(
                "study %s changed while processing (revision %d); left for the sweep",
                study_uid,
                revision,
            )
            return ProcessOutcome(
                study_uid,
                "superseded",
                revision,
                key,
                problems,
                reason="new instances arrived while processing",
                ecg=ecg,
            )
        study = session.scalar(select(Study).where(Study.study_uid == study_uid))
        assert study is not None
        _update_patient(study.patient, index)
        item = route_study(
            session,
            study,
            modalities=modalities,
            priority=priority,
            now=now,
            priority_source=priority_source,
            patient_age=patient_age,
        )
        if ecg is not None:
            session.flush()  # the item's pool id, for the alert
            record_analysis(session, study, item, ecg, now)
        if task_name is not None:
            session.execute(
                update(TaskRun)
                .where(TaskRun.study_pk == study.id, TaskRun.task_name == task_name)
                .values(status="succeeded", error=None, finished_at=now)
                .execution_options(synchronize_session=False)
            )
        session.flush()
        item_id = item.id
    log.info("study %s processed (revision %d, %d problems)", study_uid, revision, len(problems))
    return ProcessOutcome(study_uid, "processed", revision, key, problems, item_id, ecg=ecg)


def _preview_instance(refs: list[_InstanceRef], headers: list[Dataset]) -> _InstanceRef | None:
    """The middle image of the series with most images, else the first waveform."""
    by_series: dict[int, list[_InstanceRef]] = {}
    waveform: _InstanceRef | None = None
    for ref, ds in zip(refs, headers, strict=True):
        # stop_before_pixels drops Pixel Data, so look at the image geometry instead.
        if has_pixels(ds) or ("Rows" in ds and "Columns" in ds and "BitsAllocated" in ds):
            by_series.setdefault(ref.series_pk, []).append(ref)
        elif waveform is None and has_waveform(ds):
            waveform = ref
    if by_series:
        images = max(by_series.values(), key=len)
        return images[len(images) // 2]
    return waveform


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    text = str(value).strip() if value is not None else ""
    return text or None


def _index_fields(headers: list[Dataset]) -> dict[str, str | None]:
    """The study-level fields the worklist shows, decoded in the study's character set."""
    fields: dict[str, str | None] = dict.fromkeys(
        (
            "patient_name",
            "patient_sex",
            "patient_birth_date",
            "description",
            "modalities",
            "body_part",
            "character_set",
        ),
    )
    modalities: list[str] = []
    for ds in headers:
        modality = _text(ds, "Modality")
        if modality and modality not in modalities:
            modalities.append(modality)
        for name, getter in (
            ("patient_name", lambda d: decode_element(d, "PatientName")),
            ("patient_sex", lambda d: _text(d, "PatientSex")),
            ("patient_birth_date", lambda d: _text(d, "PatientBirthDate")),
            ("description", lambda d: decode_element(d, "StudyDescription")),
            ("body_part", lambda d: _text(d, "BodyPartExamined")),
            ("character_set", lambda d: "\\".join(charsets_of(d)) or None),
        ):
            if fields[name] is None:
                fields[name] = getter(ds)
    # Modalities in Study (0008,0061) is multi-valued with "\" (PS3.5 §6.4).
    fields["modalities"] = "\\".join(modalities) or None
    if fields["description"]:
        fields["description"] = fields["description"][:200]
    return fields


def _update_patient(patient: Patient, index: dict[str, str | None]) -> None:
    if index["patient_name"]:
        patient.name = index["patient_name"][:200]
    if index["patient_sex"]:
        patient.sex = index["patient_sex"][:2]
    if index["patient_birth_date"]:
        patient.birth_date = index["patient_birth_date"][:8]
