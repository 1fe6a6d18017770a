"""Verification codes and signature checks (结果互认: another hospital trusts a printout).

A signed report gets a verification code at its first signature: 10 characters drawn at random
from 32 letters and digits without the look-alikes 0/O and 1/I (50 bits; unique in the database).
It is printed on the report (text and QR code); ``GET /verify/{code}`` needs no login and shows
the essentials and whether the signature holds. An amendment keeps the code: a printout of any
version leads to the newest one, which says the report was amended (and which version is current).

A version's signature *holds* when (1) it was made by the hub's current key (``key_id``),
(2) Ed25519 verifies over the canonical JSON of the stored payload, and (3) the stored payload
still says what the stored content, report and study say. So an edit of the payload *or* of the
content in the database makes it invalid.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from remote_dx.core.models import (
    Institution,
    Patient,
    Report,
    ReportStatus,
    ReportVersion,
    Study,
    User,
)
from remote_dx.reporting.keys import HubKey
from remote_dx.reporting.templates import TEMPLATES

ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"  # no 0/O, 1/I
CODE_LENGTH = 10
CODE_PATTERN = re.compile(f"^[{ALPHABET}]{{{CODE_LENGTH}}}$")

# The content fields a signature covers (everything a printout shows).
SIGNED_CONTENT_KEYS = (
    "findings",
    "impression",
    "measurements",
    "rhythm",
    "statements",
    "critical",
    "withdrawn",
)


def new_code(session: Session) -> str:
    """A fresh code not used by any report (the unique index backs this up)."""
    while True:
        code = "".join(secrets.choice(ALPHABET) for _ in range(CODE_LENGTH))
        if session.scalar(select(Report.id).where(Report.verify_code == code)) is None:
            return code


def normalise_code(text: str) -> str | None:
    """The code as typed (any case, with spaces or dashes), or None if it cannot be one."""
    code = re.sub(r"[\s-]", "", text or "").upper()
    return code if CODE_PATTERN.match(code) else None


def version_holds(key: HubKey, report: Report, version: ReportVersion, study_uid: str) -> bool:
    """Whether ``version``'s signature holds (see the module docstring)."""
    payload = version.payload or {}
    if not version.signature or version.key_id != key.key_id:
        return False
    if not key.verify(payload, version.signature):
        return False
    content = version.content or {}
    if any(payload.get(k) != content.get(k) for k in SIGNED_CONTENT_KEYS):
        return False
    return (
        payload.get("study_uid") == study_uid
        and payload.get("version") == version.version
        and payload.get("verify_code") == report.verify_code
        and payload.get("key_id") == version.key_id
    )


def mask_name(name: str | None) -> str:
    """王小东 → 王*东, 王东 → 王*, Wang^Xiaoming → W*g: enough to match a printout, no more."""
    if not name:
        return ""
    groups = [g for g in name.split("=") if g.strip("^ ")]
    # The ideographic group (PS3.5 §6.2.1.2) when the name has one.
    chosen = groups[-1] if groups else ""
    parts = [p for p in chosen.split("^") if p]
    text = " ".join(parts) if chosen.isascii() else "".join(parts)
    text = text.strip()
    if len(text) <= 1:
        return text + "*"
    if len(text) == 2:
        return text[0] + "*"
    return text[0] + "*" + text[-1]


def mask_id(patient_id: str | None) -> str:
    """Keep a quarter of the characters at each end: XP-0001 → X*****1."""
    if not patient_id:
        return ""
    keep = max(1, len(patient_id) // 4)
    if len(patient_id) <= 2:
        return "*" * len(patient_id)
    return patient_id[:keep] + "*" * (len(patient_id) - 2 * keep) + patient_id[-keep:]


@dataclass
class Verification:
    """What ``/verify/{code}`` shows: the essentials, never more patient data than needed."""

    code: str
    status: str  # preliminary | final | amended
    signature_valid: bool
    version: int
    versions: int
    institution: str  # the reading institution (pool that signed)
    origin: str  # where the exam was taken
    exam: str
    modality: str | None
    study_date: str | None
    impression: str
    signer: str
    signer_title: str | None
    signed_at: datetime
    first_signed_at: datetime | None
    patient_name: str
    patient_id: str
    key_id: str | None
    withdrawn: bool = False
    amendment_reason: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


def verify(session: Session, code: str, key: HubKey) -> Verification | None:
    """The report with this code (its newest version), or None."""
    normal = normalise_code(code)
    if normal is None:
        return None
    row = session.execute(
        select(Report, Study, Patient)
        .join(Study, Study.id == Report.study_pk)
        .join(Patient, Patient.id == Study.patient_pk)
        .where(Report.verify_code == normal)
    ).one_or_none()
    if row is None:
        return None
    report, study, patient = row
    if ReportStatus(report.status) is ReportStatus.DRAFT or not report.current_version:
        return None
    versions = list(
        session.scalars(
            select(ReportVersion)
            .where(ReportVersion.report_id == report.id)
            .order_by(ReportVersion.version)
        )
    )
    current = next((v for v in versions if v.version == report.current_version), None)
    if current is None:
        return None
    signer = session.get(User, current.author_id)
    pool = session.get(Institution, report.pool_id)
    origin = session.get(Institution, study.origin_id)
    payload = current.payload or {}
    exam = payload.get("exam") or {}
    template = TEMPLATES.get(report.template)
    content = current.content or {}
    return Verification(
        code=normal,
        status=ReportStatus(report.status).value,
        signature_valid=version_holds(key, report, current, study.study_uid),
        version=current.version,
        versions=len(versions),
        institution=pool.name if pool else "",
        origin=origin.name if origin else "",
        exam=template.name if template else report.template,
        modality=exam.get("modality"),
        study_date=study.study_date,
        impression=str(content.get("impression") or ""),
        signer=signer.full_name if signer else "",
        signer_title=signer.title if signer else None,
        signed_at=current.created_at,
        first_signed_at=report.signed_at,
        patient_name=mask_name(patient.name),
        patient_id=mask_id(patient.patient_id),
        key_id=current.key_id,
        withdrawn=bool(content.get("withdrawn")),
        amendment_reason=current.reason,
        history=[
            {"version": v.version, "kind": v.kind, "signed_at": v.created_at} for v in versions
        ],
    )
