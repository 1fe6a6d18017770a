"""ECG studies in the hub: the preliminary analysis as the worker stores it, and what the API
reads back (analysis, printout, leads, the reader's confirmation, re-acquire notices).

The worker (:mod:`remote_dx.pipeline`) calls :func:`analyse_waveform` outside any transaction
(~10 ms of numpy per 10 s 12-lead ECG) and :func:`record_analysis` inside its publishing
transaction, so a study becomes PROCESSED together with its analysis, its STAT priority when
critical, the critical alert for the routed pool and the re-acquire notice to the township.

The machine's result is stored as :meth:`ECGAnalysis.to_dict` made it and the cart's own
measurements as the cart said them; the reader's confirmed values go beside them
(:func:`store_confirmed`) and never overwrite them.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from remote_dx.core.models import (
    AlertSource,
    AnalysisStatus,
    CriticalAlert,
    Device,
    ECGAnalysisRecord,
    Instance,
    Institution,
    Patient,
    ReacquireRequest,
    Role,
    Series,
    Study,
    User,
    WorklistItem,
)
from remote_dx.ecg.analysis import ALGORITHM_VERSION
from remote_dx.ecg.dicom_codes import ECG_SOP_CLASSES
from remote_dx.ecg.model import ECG
from remote_dx.ecg.readers.dicom_waveform import read_dicom_waveform
from remote_dx.storage.base import ObjectStore
from remote_dx.worklist.service import READER_ROLES, visibility

log = logging.getLogger(__name__)

DEVICE_KEY_PREFIX = "rdx_"


def is_ecg_sop_class(sop_class_uid: str | None) -> bool:
    """12-Lead, General or Ambulatory ECG Waveform Storage (PS3.4 B.5)."""
    return str(sop_class_uid or "") in ECG_SOP_CLASSES


# --- the worker's side ------------------------------------------------------------------------


@dataclass
class ECGOutcome:
    """The analysis of one stored ECG waveform, ready to be recorded."""

    sop_instance_uid: str
    status: AnalysisStatus
    result: dict[str, Any] | None = None
    device_measurements: dict[str, Any] | None = None
    error: str | None = None
    seconds: float = 0.0
    algorithm_version: str = ALGORITHM_VERSION

    @property
    def critical(self) -> bool:
        return bool(self.result and (self.result.get("critical") or {}).get("critical"))

    @property
    def critical_reasons(self) -> list[Any]:
        return list(((self.result or {}).get("critical") or {}).get("reasons") or [])

    @property
    def unsatisfactory(self) -> bool:
        quality = (self.result or {}).get("quality") or {}
        return bool(quality.get("technically_unsatisfactory"))


def preload_analysis() -> None:
    """Import the analysis (neurokit2, SciPy) and load the delineation network now rather than
    on the first ECG: a worker calls this as it starts, so a chest-pain ECG never waits the ~3 s
    import."""
    import remote_dx.ecg.analysis.analyze  # noqa: F401
    from remote_dx.ecg.analysis import delineator

    delineator.warm_up()


def analyse_waveform(data: bytes, *, sop_instance_uid: str) -> ECGOutcome:
    """Read a DICOM ECG waveform and analyse it; any failure becomes a FAILED outcome (the
    study is processed and routed all the same, the reader reads the tracing)."""
    from remote_dx.ecg.analysis.analyze import analyze

    started = time.perf_counter()
    try:
        ecg = read_dicom_waveform(data, name=sop_instance_uid)
        result = analyze(ecg).to_dict()
    except Exception as exc:  # a bad waveform or an analysis bug must not stop the study
        log.warning("ECG analysis of %s failed: %s", sop_instance_uid, exc, exc_info=True)
        return ECGOutcome(
            sop_instance_uid,
            AnalysisStatus.FAILED,
            error=f"{type(exc).__name__}: {exc}",
            seconds=time.perf_counter() - started,
        )
    measured = ecg.device_measurements
    return ECGOutcome(
        sop_instance_uid,
        AnalysisStatus.DONE,
        result=_jsonable(result),
        device_measurements=_jsonable(asdict(measured)) if measured is not None else None,
        seconds=time.perf_counter() - started,
        algorithm_version=str(result.get("algorithm_version") or ALGORITHM_VERSION),
    )


def record_analysis(
    session: Session, study: Study, item: WorklistItem | None, outcome: ECGOutcome, now: datetime
) -> ECGAnalysisRecord:
    """Upsert the study's analysis record (one per study; the reader's confirmation is kept)
    and raise what it calls for: a critical alert for the routed pool, a re-acquire notice for
    the origin. Both are raised once per study, however often the study is processed."""
    record = session.scalar(select(ECGAnalysisRecord).where(ECGAnalysisRecord.study_pk == study.id))
    if record is None:
        record = ECGAnalysisRecord(study_pk=study.id)
        session.add(record)
    result = outcome.result or {}
    record.sop_instance_uid = outcome.sop_instance_uid
    record.algorithm_version = outcome.algorithm_version
    record.status = outcome.status
    record.error = outcome.error
    record.result = outcome.result
    record.device_measurements = outcome.device_measurements
    record.heart_rate = result.get("heart_rate")
    record.rhythm = result.get("rhythm")
    record.critical = outcome.critical
    record.technically_unsatisfactory = outcome.unsatisfactory
    record.analysed_at = now

    if outcome.critical and item is not None:
        raised = session.scalar(
            select(CriticalAlert.id).where(
                CriticalAlert.study_pk == study.id,
                CriticalAlert.source == AlertSource.ECG_ANALYSIS,
            )
        )
        if raised is None:
            session.add(
                CriticalAlert(
                    study_pk=study.id,
                    pool_id=item.pool_id,
                    origin_id=study.origin_id,
                    source=AlertSource.ECG_ANALYSIS,
                    reasons=outcome.critical_reasons,
                    raised_at=now,
                )
            )
            log.warning(
                "CRITICAL ECG %s for pool %s: %s",
                study.study_uid,
                item.pool_id,
                ", ".join(str(r.get("code", r)) for r in outcome.critical_reasons),
            )
    if outcome.unsatisfactory:
        quality = result.get("quality") or {}
        notice = session.scalar(
            select(ReacquireRequest).where(ReacquireRequest.study_pk == study.id)
        )
        if notice is None:
            session.add(
                ReacquireRequest(
                    study_pk=study.id,
                    origin_id=study.origin_id,
                    reasons=list(quality.get("reasons") or []),
                    leads=dict(quality.get("leads") or {}),
                    requested_at=now,
                )
            )
            log.warning("ECG %s technically unsatisfactory: re-acquire", study.study_uid)
    return record


def _jsonable(value: Any) -> Any:
    """Plain JSON types (numpy scalars from the analysis become floats/ints/bools)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        return value.item()
    return value


# --- the API's side ---------------------------------------------------------------------------


class NotAnECG(LookupError):
    """The study exists and is visible but holds no ECG waveform."""


def visible_study(session: Session, user: User, study_uid: str) -> Study | None:
    """The study if ``user`` may see it (the worklist's scoping rule), else None."""
    return session.scalar(
        select(Study)
        .outerjoin(WorklistItem, WorklistItem.study_pk == Study.id)
        .where(Study.study_uid == study_uid, visibility(user))
    )


def waveform_instance(session: Session, study: Study) -> Instance:
    """The study's (first) ECG waveform instance; :class:`NotAnECG` if it has none."""
    instance = session.scalar(
        select(Instance)
        .join(Series, Series.id == Instance.series_pk)
        .where(Series.study_pk == study.id, Instance.sop_class_uid.in_(sorted(ECG_SOP_CLASSES)))
        .order_by(Series.series_number, Series.id, Instance.instance_number, Instance.id)
        .limit(1)
    )
    if instance is None:
        raise NotAnECG(f"study {study.study_uid} holds no ECG waveform")
    return instance


def load_ecg(session: Session, store: ObjectStore, study: Study) -> ECG:
    instance = waveform_instance(session, study)
    return read_dicom_waveform(store.get(instance.object_key), name=instance.sop_instance_uid)


def analysis_record(session: Session, study: Study) -> ECGAnalysisRecord | None:
    return session.scalar(select(ECGAnalysisRecord).where(ECGAnalysisRecord.study_pk == study.id))


def analysis_view(record: ECGAnalysisRecord) -> dict[str, Any]:
    """The JSON of a finished analysis: the machine's values at top level, the cart's and the
    reader's beside them."""
    body: dict[str, Any] = dict(record.result or {})
    body.setdefault("algorithm_version", record.algorithm_version)
    body["status"] = record.status.value
    body["analysed_at"] = record.analysed_at
    if record.status == AnalysisStatus.FAILED:
        body["error"] = record.error
    body["device_measurements"] = record.device_measurements
    body["confirmed"] = record.confirmed
    body["confirmed_at"] = record.confirmed_at
    return body


def header_measurements(record: ECGAnalysisRecord | None) -> dict[str, Any] | None:
    """Measurements for the printout header: the reader's confirmed values where there are
    some, else the machine's (labelled so a reader can tell which)."""
    if record is None:
        return None
    confirmed = (record.confirmed or {}).get("measurements") or {}
    values = {**(record.result or {}), **{k: v for k, v in confirmed.items() if v is not None}}
    if not values:
        return None

    def fmt(key: str, unit: str) -> str | None:
        value = values.get(key)
        return None if value is None else f"{value:.0f} {unit}"

    critical = (record.result or {}).get("critical") or {}
    return {
        "HR": fmt("heart_rate", "bpm"),
        "PR": fmt("pr_ms", "ms"),
        "QRS": fmt("qrs_ms", "ms"),
        "QT": fmt("qt_ms", "ms"),
        "QTc(B)": fmt("qtc_bazett_ms", "ms"),
        "Axis": fmt("axis_deg", "°"),
        "Rhythm": values.get("rhythm"),
        "CRITICAL": "yes" if critical.get("critical") else None,
        "Source": "confirmed" if confirmed else f"machine {record.algorithm_version or ''}",
    }


def can_confirm(user: User, item: WorklistItem | None) -> bool:
    """Readers (and senior readers, supervisors) of the pool the study was routed to."""
    return (
        item is not None and Role(user.role) in READER_ROLES and item.pool_id == user.institution_id
    )


def store_confirmed(
    session: Session, study: Study, user: User, confirmed: dict[str, Any], now: datetime
) -> ECGAnalysisRecord:
    """Keep the reader's confirmed measurements and statements beside the machine's."""
    record = analysis_record(session, study)
    if record is None:  # confirmed before (or without) a machine analysis
        record = ECGAnalysisRecord(study_pk=study.id, status=AnalysisStatus.PENDING)
        session.add(record)
    record.confirmed = {**confirmed, "confirmed_by": user.username}
    record.confirmed_by_id = user.id
    record.confirmed_at = now
    return record


@dataclass
class Notice:
    study_uid: str
    origin: str
    patient_id: str
    patient_name: str | None
    reasons: list[str]
    leads: dict[str, Any] = field(default_factory=dict)
    requested_at: datetime | None = None
    resolved_at: datetime | None = None


def reacquire_notices(session: Session, user: User, *, open_only: bool = True) -> list[Notice]:
    """Re-acquire notices for the studies ``user`` may see, newest first."""
    statement = (
        select(
            ReacquireRequest, Study.study_uid, Institution.name, Patient.patient_id, Patient.name
        )
        .join(Study, Study.id == ReacquireRequest.study_pk)
        .join(Institution, Institution.id == ReacquireRequest.origin_id)
        .join(Patient, Patient.id == Study.patient_pk)
        .outerjoin(WorklistItem, WorklistItem.study_pk == Study.id)
        .where(visibility(user))
        .order_by(ReacquireRequest.requested_at.desc(), ReacquireRequest.id.desc())
        .limit(500)
    )
    if open_only:
        statement = statement.where(ReacquireRequest.resolved_at.is_(None))
    return [
        Notice(
            study_uid=uid,
            origin=origin,
            patient_id=patient_id,
            patient_name=patient_name,
            reasons=list(notice.reasons or []),
            leads=dict(notice.leads or {}),
            requested_at=notice.requested_at,
            resolved_at=notice.resolved_at,
        )
        for notice, uid, origin, patient_id, patient_name in session.execute(statement)
    ]


# --- device API keys --------------------------------------------------------------------------


def hash_device_key(key: str) -> str:
    """SHA-256 of a device key: the keys are 32 random bytes, so no slow hash is needed."""
    return hashlib.sha256(key.strip().encode("utf-8")).hexdigest()


def new_device_key(session: Session, ae_title: str) -> str:
    """Make a new key for the device (replacing any old one) and return it; only its hash is
    kept, so this is the one time it can be shown. LookupError if no such device."""
    device = session.scalar(select(Device).where(Device.ae_title == ae_title))
    if device is None:
        raise LookupError(f"no device with AE title {ae_title!r}")
    key = DEVICE_KEY_PREFIX + secrets.token_urlsafe(32)
    device.api_key_hash = hash_device_key(key)
    return key


def device_for_key(session: Session, key: str) -> Device | None:
    """The enabled device holding ``key``, else None."""
    if not key or not key.strip():
        return None
    return session.scalar(
        select(Device).where(Device.api_key_hash == hash_device_key(key), Device.enabled.is_(True))
    )
