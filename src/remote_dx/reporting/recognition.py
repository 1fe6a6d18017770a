"""The recognition registry (结果互认): which signed results another member hospital accepts,
so the patient is not examined again.

A result is *recognisable* when all of these hold:

- it is signed and final: status ``final`` or ``amended`` (a preliminary signature awaits the
  senior's and is not a result yet);
- its newest version does not withdraw it (an amendment may withdraw a result, e.g. a wrong
  patient) — older versions never count on their own ("not amended away");
- the reader who signed the newest version was a qualified upper-level reader: role reader or
  senior reader, qualified for the modality, working at an institution of county level or
  above (a township reader's result is not recognised across the community);
- the exam is within its type's validity window, counted from when the hub received the study
  (the hub's clock; township modality clocks are often wrong);
- its signature holds (see :mod:`remote_dx.reporting.verify`).

The validity windows are policy, not code: a health commission (卫健委) sets them per exam type
under the national rules on mutual recognition of examination results (医疗机构检查检验结果互认
管理办法, 2022), usually by how fast the finding can change. :data:`VALIDITY_DAYS` holds this hub's
table (chest X-ray 30 days, an ECG 7 days…); a deployment edits it or passes its own to
:func:`lookup`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, select
from sqlalchemy.orm import Session, aliased

from remote_dx.core.clock import utcnow
from remote_dx.core.models import (
    Institution,
    InstitutionLevel,
    Patient,
    Report,
    ReportStatus,
    ReportVersion,
    Study,
    User,
)
from remote_dx.reporting.access import SIGNING_ROLES, study_modality
from remote_dx.reporting.errors import InvalidReport
from remote_dx.reporting.keys import HubKey
from remote_dx.reporting.templates import TEMPLATES
from remote_dx.reporting.verify import version_holds

# Days a signed result stays recognisable, per report template (exam type).
VALIDITY_DAYS: dict[str, int] = {
    "chest-dx": 30,
    "limb-dx": 30,
    "imaging": 30,
    "ecg": 7,
}

UPPER_LEVELS = frozenset(
    {InstitutionLevel.COUNTY, InstitutionLevel.CITY, InstitutionLevel.PROVINCE}
)

# What ``exam=`` may say: a template code, or a modality naming several templates.
EXAM_ALIASES: dict[str, tuple[str, ...]] = {
    **{code: (code,) for code in TEMPLATES},
    "dx": ("chest-dx", "limb-dx", "imaging"),
    "cr": ("chest-dx", "limb-dx", "imaging"),
    "chest": ("chest-dx",),
}


def exam_templates(exam: str | None) -> tuple[str, ...] | None:
    """Template codes for ``exam`` (None: every exam); InvalidReport for an unknown exam."""
    if exam is None or not exam.strip():
        return None
    codes = EXAM_ALIASES.get(exam.strip().lower())
    if codes is None:
        raise InvalidReport(f"unknown exam {exam!r}; use one of {', '.join(sorted(EXAM_ALIASES))}")
    return codes


@dataclass
class RecognisedResult:
    study_uid: str
    exam: str
    exam_name: str
    modality: str | None
    study_date: str | None
    received_at: datetime
    origin: str
    reading_institution: str
    status: str
    version: int
    signed_at: datetime
    signer: dict[str, Any]
    patient_name: str | None
    findings: str
    impression: str
    valid_until: datetime
    verify_code: str
    signature_valid: bool


@dataclass
class NotRecognised:
    study_uid: str
    exam: str
    verify_code: str | None
    reason: str


@dataclass
class RecognitionAnswer:
    patient_id: str
    issuer: str | None
    exam: str | None
    as_of: datetime
    results: list[RecognisedResult] = field(default_factory=list)
    not_recognisable: list[NotRecognised] = field(default_factory=list)


_signer = aliased(User, name="signer")
_signer_inst = aliased(Institution, name="signer_inst")
_origin = aliased(Institution, name="origin")
_pool = aliased(Institution, name="pool")


def _refusal(
    report: Report,
    version: ReportVersion,
    signer: User,
    signer_inst: Institution,
    modality: str | None,
    valid_until: datetime,
    now: datetime,
) -> str | None:
    status = ReportStatus(report.status)
    if status is ReportStatus.PRELIMINARY:
        return "preliminary: awaits the senior reader's second signature"
    if status not in (ReportStatus.FINAL, ReportStatus.AMENDED):
        return f"not signed ({status.value})"
    if (version.content or {}).get("withdrawn"):
        return f"withdrawn by amendment (version {version.version}): {version.reason or ''}".strip()
    if InstitutionLevel(signer_inst.level) not in UPPER_LEVELS:
        return (
            f"signed at {signer_inst.name} ({InstitutionLevel(signer_inst.level).value} level); "
            "only county level or above is recognised"
        )
    if signer.role not in SIGNING_ROLES:
        return f"signed by a {signer.role}, not a reader"
    if modality and modality.upper() not in {m.upper() for m in signer.modalities or []}:
        return f"the signer is not qualified for {modality}"
    if now > valid_until:
        return f"expired on {valid_until.date().isoformat()} (validity window)"
    return None


def lookup(
    session: Session,
    *,
    patient_id: str,
    key: HubKey,
    exam: str | None = None,
    issuer: str | None = None,
    now: datetime | None = None,
    validity: Mapping[str, int] | None = None,
) -> RecognitionAnswer:
    """The patient's recognisable results (newest first) and, beside them, the signed results
    that are not recognisable with the reason."""
    now = now or utcnow()
    windows = validity if validity is not None else VALIDITY_DAYS
    templates = exam_templates(exam)
    statement = (
        select(Report, ReportVersion, Study, Patient, _signer, _signer_inst, _origin, _pool)
        .join(
            ReportVersion,
            and_(
                ReportVersion.report_id == Report.id,
                ReportVersion.version == Report.current_version,
            ),
        )
        .join(Study, Study.id == Report.study_pk)
        .join(Patient, Patient.id == Study.patient_pk)
        .join(_signer, _signer.id == ReportVersion.author_id)
        .join(_signer_inst, _signer_inst.id == _signer.institution_id)
        .join(_origin, _origin.id == Study.origin_id)
        .join(_pool, _pool.id == Report.pool_id)
        .where(Patient.patient_id == patient_id, Report.status != ReportStatus.DRAFT)
        .order_by(Study.received_at.desc(), Report.id.desc())
        .limit(200)
    )
    if issuer:
        statement = statement.where(Patient.issuer == issuer)
    if templates is not None:
        statement = statement.where(Report.template.in_(templates))
    answer = RecognitionAnswer(patient_id=patient_id, issuer=issuer, exam=exam, as_of=now)
    for report, version, study, patient, signer, signer_inst, origin, pool in session.execute(
        statement
    ):
        modality = study_modality(session, study)
        days = windows.get(report.template, windows.get("imaging", 30))
        valid_until = study.received_at + timedelta(days=days)
        reason = _refusal(report, version, signer, signer_inst, modality, valid_until, now)
        holds = version_holds(key, report, version, study.study_uid)
        if reason is None and not holds:
            reason = "the signature does not hold (altered or signed with another key)"
        if reason is not None:
            answer.not_recognisable.append(
                NotRecognised(study.study_uid, report.template, report.verify_code, reason)
            )
            continue
        template = TEMPLATES.get(report.template)
        content = version.content or {}
        answer.results.append(
            RecognisedResult(
                study_uid=study.study_uid,
                exam=report.template,
                exam_name=template.name if template else report.template,
                modality=modality,
                study_date=study.study_date,
                received_at=study.received_at,
                origin=origin.name,
                reading_institution=pool.name,
                status=ReportStatus(report.status).value,
                version=version.version,
                signed_at=version.created_at,
                signer={
                    "name": signer.full_name,
                    "title": signer.title,
                    "institution": signer_inst.name,
                    "level": InstitutionLevel(signer_inst.level).value,
                },
                patient_name=patient.name,
                findings=str(content.get("findings") or ""),
                impression=str(content.get("impression") or ""),
                valid_until=valid_until,
                verify_code=str(report.verify_code),
                signature_valid=holds,
            )
        )
    return answer
