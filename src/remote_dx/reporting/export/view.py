"""What every export of a signed report shows: one read of the database, no formatting.

:func:`load_view` builds a :class:`SignedReportView` for a study's current signed version. The
reporting service (``remote_dx.reporting.service.signed_report_view``) is used when it exists, so
the signature check is the one that service does; otherwise the view is read here from the rows
(``reports``, ``report_versions``, study, patient, institutions, users) with the signature left
unchecked (``signature_valid`` None).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from remote_dx.core.models import (
    Instance,
    Institution,
    Patient,
    Report,
    ReportStatus,
    ReportVersion,
    Series,
    Study,
    User,
)

SIGNED_STATUSES = (ReportStatus.PRELIMINARY, ReportStatus.FINAL, ReportStatus.AMENDED)


@dataclass(frozen=True)
class PatientInfo:
    patient_id: str
    issuer: str
    name: str | None = None  # DICOM PN text: "Family^Given=汉字^…" groups kept
    sex: str | None = None  # M | F | O
    birth_date: str | None = None  # YYYYMMDD


@dataclass(frozen=True)
class StudyInfo:
    study_uid: str
    accession_number: str | None = None
    study_date: str | None = None  # YYYYMMDD
    study_time: str | None = None
    description: str | None = None
    modality: str | None = None  # the first series' modality (ECG, DX, CR…)
    body_part: str | None = None
    num_images: int = 0


@dataclass(frozen=True)
class Signer:
    name: str
    title: str | None = None  # 主治医师 …
    institution: str | None = None
    role: str = "author"  # author | confirmer (second signature)
    signed_at: datetime | None = None
    username: str | None = None


@dataclass(frozen=True)
class SignedReportView:
    """A signed (or preliminary-signed) report version and everything printed around it."""

    report_id: int
    version: int
    status: str  # preliminary | final | amended
    template: str
    patient: PatientInfo
    study: StudyInfo
    origin_name: str
    origin_code: str
    pool_name: str
    pool_code: str
    content: dict[str, Any]  # findings, impression, measurements, statements
    signers: list[Signer] = field(default_factory=list)
    signed_at: datetime | None = None
    verify_code: str | None = None
    signature_valid: bool | None = None
    amendment_reason: str | None = None
    critical: bool = False
    origin_id: int | None = None
    pool_id: int | None = None

    @property
    def is_ecg(self) -> bool:
        return (self.study.modality or "").upper() == "ECG" or "ecg" in self.template.lower()

    @property
    def findings(self) -> str:
        return _text(self.content.get("findings"))

    @property
    def impression(self) -> str:
        return _text(self.content.get("impression") or self.content.get("conclusion"))

    @property
    def statements(self) -> list[str]:
        raw = self.content.get("statements") or []
        out = []
        for item in raw:
            if isinstance(item, dict):
                item = item.get("text") or item.get("label") or item.get("code")
            if item:
                out.append(str(item))
        return out

    @property
    def measurements(self) -> dict[str, float]:
        """Numeric measurements by key (heart_rate, pr_ms…); {"value": x} entries flattened."""
        out: dict[str, float] = {}
        for key, value in (self.content.get("measurements") or {}).items():
            if isinstance(value, dict):
                value = value.get("value")
            if isinstance(value, bool) or value is None:
                continue
            try:
                out[str(key)] = float(value)
            except (TypeError, ValueError):
                continue
        return out

    @property
    def final_signer(self) -> Signer | None:
        """Who answers for the result: the confirmer of a second signature, else the author."""
        for signer in self.signers:
            if signer.role == "confirmer":
                return signer
        return self.signers[0] if self.signers else None


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return "\n".join(str(v) for v in value if v)
    return str(value).strip()


class NoSignedReport(LookupError):
    """The study has no signed report (yet)."""


def _service_view(session: Session, study_uid: str) -> Any | None:
    try:
        service = importlib.import_module("remote_dx.reporting.service")
    except ImportError:
        return None
    func_ = getattr(service, "signed_report_view", None)
    if func_ is None:
        return None
    return func_(session, study_uid)


def load_view(session: Session, study_uid: str) -> SignedReportView:
    """The current signed version of the study's report; :class:`NoSignedReport` if none."""
    row = session.execute(
        select(Report, Study, Patient)
        .join(Study, Study.id == Report.study_pk)
        .join(Patient, Patient.id == Study.patient_pk)
        .where(Study.study_uid == study_uid)
    ).one_or_none()
    if row is None:
        raise NoSignedReport(f"study {study_uid} has no report")
    report, study, patient = row
    if ReportStatus(report.status) not in SIGNED_STATUSES or not report.current_version:
        raise NoSignedReport(f"the report of study {study_uid} is not signed yet")
    version = session.scalar(
        select(ReportVersion).where(
            ReportVersion.report_id == report.id, ReportVersion.version == report.current_version
        )
    )
    if version is None:
        raise NoSignedReport(f"the report of study {study_uid} has no signed version")
    origin = session.get(Institution, study.origin_id)
    pool = session.get(Institution, report.pool_id)
    assert origin is not None and pool is not None
    first_modality = session.scalar(
        select(Series.modality)
        .where(Series.study_pk == study.id, Series.modality.is_not(None))
        .order_by(Series.id)
        .limit(1)
    )
    num_images = session.scalar(
        select(func.count(Instance.id))
        .join(Series, Series.id == Instance.series_pk)
        .where(Series.study_pk == study.id)
    )
    signers: list[Signer] = []
    for user_id, role, when in (
        (report.signed_by_id or version.author_id, "author", report.signed_at),
        (report.confirmed_by_id, "confirmer", report.confirmed_at),
    ):
        user = session.get(User, user_id) if user_id else None
        if user is None:
            continue
        institution = session.get(Institution, user.institution_id)
        signers.append(
            Signer(
                name=user.full_name,
                title=user.title,
                institution=institution.name if institution else None,
                role=role,
                signed_at=when,
                username=user.username,
            )
        )
    signature_valid: bool | None = None
    service_view = _service_view(session, study_uid)
    if service_view is not None:
        signature_valid = getattr(service_view, "signature_valid", None)
    return SignedReportView(
        report_id=report.id,
        version=version.version,
        status=ReportStatus(report.status).value,
        template=report.template,
        patient=PatientInfo(
            patient_id=patient.patient_id,
            issuer=patient.issuer,
            name=patient.name,
            sex=patient.sex,
            birth_date=patient.birth_date,
        ),
        study=StudyInfo(
            study_uid=study.study_uid,
            accession_number=study.accession_number,
            study_date=study.study_date,
            study_time=study.study_time,
            description=study.description,
            modality=first_modality or (study.modalities or "").split("\\")[0] or None,
            body_part=study.body_part,
            num_images=int(num_images or 0),
        ),
        origin_name=origin.name,
        origin_code=origin.code,
        pool_name=pool.name,
        pool_code=pool.code,
        content=dict(version.content or {}),
        signers=signers,
        signed_at=report.confirmed_at
        or (version.created_at if version.kind == "amend" else report.signed_at)
        or version.created_at,
        verify_code=report.verify_code,
        signature_valid=signature_valid,
        amendment_reason=version.reason if version.kind == "amend" else None,
        critical=bool(report.critical),
        origin_id=origin.id,
        pool_id=pool.id,
    )


def display_name(pn: str | None) -> str:
    """A person name for print: the ideographic group when there is one (王小明), else the
    alphabetic one with its components spaced (Wang Xiaoming)."""
    if not pn:
        return ""
    groups = pn.split("=")
    for group in reversed(groups[1:]):
        if group.strip("^ "):
            return group.replace("^", "").strip()
    return " ".join(part for part in groups[0].split("^") if part).strip()
