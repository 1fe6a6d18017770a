"""What every export of a signed report shows: one read of the database, no formatting.

:func:`load_view` takes the reporting service's ``signed_report_view`` (signers, the signature
check) and adds what the exports need besides (the number of images, for the exam code), in the
shape the PDF, DICOM and FHIR writers use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from remote_dx.core.models import Instance, Series, Study
from remote_dx.core.settings import Settings


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
    role: str = "author"  # author | confirmer (second signature) | amender
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
                item = item.get("zh") or item.get("text") or item.get("en") or item.get("code")
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
        """Who answers for the result (the confirmer or amender when there is one)."""
        return self.signers[-1] if self.signers else None


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return "\n".join(str(v) for v in value if v)
    return str(value).strip()


class NoSignedReport(LookupError):
    """The study has no signed report (yet)."""


def load_view(
    session: Session,
    study_uid: str,
    *,
    version: int | None = None,
    settings: Settings | None = None,
) -> SignedReportView:
    """The study's current (or ``version``) signed report, as the reporting service reads it
    (signers, signature check); :class:`NoSignedReport` if there is none."""
    from remote_dx.reporting import service
    from remote_dx.reporting.errors import ReportNotFound

    try:
        signed = service.signed_report_view(
            session,
            study_uid,
            version=version,
            key=service.hub_key(settings) if settings is not None else None,
        )
    except ReportNotFound as exc:
        raise NoSignedReport(str(exc)) from exc
    num_images = session.scalar(
        select(func.count(Instance.id))
        .join(Series, Series.id == Instance.series_pk)
        .join(Study, Study.id == Series.study_pk)
        .where(Study.study_uid == study_uid)
    )
    return SignedReportView(
        report_id=signed.report_id,
        version=signed.version,
        status=signed.status,
        template=signed.template,
        patient=PatientInfo(
            patient_id=signed.patient_id,
            issuer=signed.patient_issuer,
            name=signed.patient_name,
            sex=signed.patient_sex,
            birth_date=signed.patient_birth_date,
        ),
        study=StudyInfo(
            study_uid=signed.study_uid,
            accession_number=signed.accession_number,
            study_date=signed.study_date,
            study_time=signed.study_time,
            description=signed.study_description,
            modality=signed.modality,
            body_part=signed.body_part,
            num_images=int(num_images or 0),
        ),
        origin_name=signed.origin_name,
        origin_code=signed.origin_code,
        pool_name=signed.pool_name,
        pool_code=signed.pool_code,
        content=dict(signed.content or {}),
        signers=[
            Signer(
                name=s.name,
                title=s.title,
                institution=s.institution,
                role=s.role,
                signed_at=s.signed_at,
                username=s.username,
            )
            for s in signed.signers
        ],
        signed_at=signed.signed_at,
        verify_code=signed.verify_code,
        signature_valid=signed.signature_valid,
        amendment_reason=signed.amendment_reason,
        critical=signed.critical,
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
