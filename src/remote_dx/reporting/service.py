"""The reporting service: what the API and the other packages call.

- :func:`report_view` — a study's report with all its versions, for ``GET …/report``;
- :func:`save_draft`, :func:`sign`, :func:`confirm`, :func:`amend` — the steps
  (:mod:`.drafts`, :mod:`.signing`); none commits, the caller does;
- :func:`signed_report_view` — everything a printout, a DICOM object or a FHIR resource of the
  current signed version needs (delivery builds on it);
- :data:`on_signed` — hooks run (inside the signing transaction) whenever a version becomes
  deliverable: a final first signature, a confirmation, an amendment. Never for a preliminary
  signature. Delivery registers a hook here to create its ``Delivery`` rows.
"""

from __future__ import annotations

from collections.abc import Callable
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
    Role,
    Study,
    User,
)
from remote_dx.core.settings import Settings, get_settings
from remote_dx.reporting import access
from remote_dx.reporting.drafts import save_draft
from remote_dx.reporting.errors import ReportNotFound
from remote_dx.reporting.keys import HubKey, load_signing_key
from remote_dx.reporting.recognition import VALIDITY_DAYS
from remote_dx.reporting.schemas import (
    DraftView,
    PersonView,
    ReportView,
    TemplateView,
    VersionView,
)
from remote_dx.reporting.signing import amend, confirm, sign
from remote_dx.reporting.templates import TEMPLATES, initial_content, study_template
from remote_dx.reporting.verify import version_holds

__all__ = [
    "SignedReportView",
    "amend",
    "confirm",
    "on_signed",
    "report_view",
    "save_draft",
    "sign",
    "signed_report_view",
    "template_views",
]

on_signed: list[Callable[[Session, Report, ReportVersion], None]] = []

SIGNED_STATUSES = (ReportStatus.PRELIMINARY, ReportStatus.FINAL, ReportStatus.AMENDED)


def hub_key(settings: Settings | None = None) -> HubKey:
    return load_signing_key(settings or get_settings())


def template_views() -> list[TemplateView]:
    return [
        TemplateView(
            code=t.code,
            name=t.name,
            name_en=t.name_en,
            kind=t.kind,
            modalities=list(t.modalities),
            defaults=dict(t.defaults),
            validity_days=VALIDITY_DAYS.get(t.code),
        )
        for t in TEMPLATES.values()
    ]


def _person(session: Session, user_id: int | None) -> PersonView | None:
    if user_id is None:
        return None
    user = session.get(User, user_id)
    if user is None:
        return None
    institution = session.get(Institution, user.institution_id)
    return PersonView(
        name=user.full_name,
        username=user.username,
        title=user.title,
        institution=institution.name if institution else None,
    )


def _sees_drafts(user: User, ctx: access.StudyContext) -> bool:
    role = Role(user.role)
    if role is Role.ADMIN:
        return True
    return (
        role in (Role.READER, Role.SENIOR_READER, Role.SUPERVISOR)
        and ctx.item is not None
        and ctx.item.pool_id == user.institution_id
    )


def report_view(session: Session, user: User, study_uid: str, *, key: HubKey) -> ReportView:
    """The study's report as ``user`` may see it: the versions for everyone who sees the study,
    the draft (or the template's suggestion) for the pool's readers only."""
    ctx = access.load(session, user, study_uid)
    report = ctx.report
    versions: list[ReportVersion] = []
    if report is not None:
        versions = list(
            session.scalars(
                select(ReportVersion)
                .where(ReportVersion.report_id == report.id)
                .order_by(ReportVersion.version)
            )
        )
    template = report.template if report is not None else study_template(ctx.study, ctx.modality)
    draft: DraftView | None = None
    if _sees_drafts(user, ctx):
        if report is not None and report.draft is not None:
            draft = DraftView(
                template=report.template,
                content=report.draft,
                saved_at=report.draft_saved_at,
                saved=True,
                revision=report.draft_revision or 0,
            )
        elif report is None or ReportStatus(report.status) is ReportStatus.DRAFT:
            record = ctx.ecg_record(session)
            draft = DraftView(
                template=template,
                content=initial_content(TEMPLATES[template], record),
                saved_at=None,
                saved=False,
                revision=(report.draft_revision or 0) if report is not None else 0,
            )
    return ReportView(
        study_uid=ctx.study.study_uid,
        status=ReportStatus(report.status).value if report is not None else None,
        template=template,
        current_version=report.current_version if report is not None else 0,
        second_signature_required=bool(ctx.item and ctx.item.second_signature_required),
        verify_code=report.verify_code if report is not None else None,
        positive=report.positive if report is not None else None,
        critical=bool(report.critical) if report is not None else False,
        signed_by=_person(session, report.signed_by_id) if report is not None else None,
        signed_at=report.signed_at if report is not None else None,
        confirmed_by=_person(session, report.confirmed_by_id) if report is not None else None,
        confirmed_at=report.confirmed_at if report is not None else None,
        draft=draft,
        versions=[
            VersionView(
                version=v.version,
                kind=v.kind,
                content=v.content,
                reason=v.reason,
                author=_person(session, v.author_id),
                created_at=v.created_at,
                key_id=v.key_id,
                signature_valid=version_holds(key, report, v, ctx.study.study_uid),  # type: ignore[arg-type]
            )
            for v in versions
        ],
    )


# --- for delivery (PDF, DICOM, FHIR) ----------------------------------------------------------


@dataclass(frozen=True)
class SignerInfo:
    name: str
    username: str
    title: str | None
    institution: str | None
    role: str  # author | confirmer | amender
    signed_at: datetime | None


@dataclass(frozen=True)
class SignedReportView:
    """One signed version of a study's report and everything printed around it."""

    report_id: int
    study_uid: str
    accession_number: str | None
    study_date: str | None
    study_time: str | None
    study_description: str | None
    modality: str | None
    body_part: str | None
    patient_id: str
    patient_issuer: str
    patient_name: str | None  # DICOM PN text as stored
    patient_sex: str | None
    patient_birth_date: str | None
    origin_name: str
    origin_code: str
    pool_name: str
    pool_code: str
    template: str
    template_name: str
    status: str  # preliminary | final | amended
    version: int
    kind: str  # preliminary | final | confirm | amend
    content: dict[str, Any]  # findings, impression, measurements, rhythm, statements{code,zh,en}
    signers: list[SignerInfo] = field(default_factory=list)
    signed_at: datetime | None = None  # when this version was signed
    first_signed_at: datetime | None = None
    verify_code: str | None = None
    verify_path: str | None = None  # "/verify/<code>": prefix with the hub's public address
    signature: str | None = None
    key_id: str | None = None
    signature_valid: bool = False
    amendment_reason: str | None = None
    positive: bool | None = None
    critical: bool = False
    withdrawn: bool = False

    @property
    def findings(self) -> str:
        return str(self.content.get("findings") or "")

    @property
    def impression(self) -> str:
        return str(self.content.get("impression") or "")


def signed_report_view(
    session: Session, study_uid: str, *, version: int | None = None, key: HubKey | None = None
) -> SignedReportView:
    """The study's current (or ``version``) signed report; :class:`ReportNotFound` if there is
    no signed report. No user scoping: callers are the hub's own delivery code."""
    row = session.execute(
        select(Report, Study, Patient)
        .join(Study, Study.id == Report.study_pk)
        .join(Patient, Patient.id == Study.patient_pk)
        .where(Study.study_uid == study_uid)
    ).one_or_none()
    if row is None:
        raise ReportNotFound(f"study {study_uid} has no report")
    report, study, patient = row
    if ReportStatus(report.status) not in SIGNED_STATUSES or not report.current_version:
        raise ReportNotFound(f"the report of study {study_uid} is not signed")
    wanted = version or report.current_version
    signed = session.scalar(
        select(ReportVersion).where(
            ReportVersion.report_id == report.id, ReportVersion.version == wanted
        )
    )
    if signed is None:
        raise ReportNotFound(f"the report of study {study_uid} has no version {wanted}")
    origin = session.get(Institution, study.origin_id)
    pool = session.get(Institution, report.pool_id)
    assert origin is not None and pool is not None
    key = key or hub_key()
    signers: list[SignerInfo] = []
    first = session.scalar(
        select(ReportVersion).where(
            ReportVersion.report_id == report.id, ReportVersion.version == 1
        )
    )
    roles = {"preliminary": "author", "final": "author", "confirm": "confirmer", "amend": "amender"}
    # The first signer, then the confirmer, then (for an amendment) whoever amended.
    chain = [v for v in (first, signed) if v is not None]
    if signed.kind == "confirm" or (signed.kind == "amend" and report.confirmed_by_id):
        confirm_row = session.scalar(
            select(ReportVersion).where(
                ReportVersion.report_id == report.id, ReportVersion.kind == "confirm"
            )
        )
        if confirm_row is not None:
            chain.insert(1, confirm_row)
    seen: set[int] = set()
    for v in chain:
        if v.id in seen or v.version > signed.version:
            continue
        seen.add(v.id)
        person = _person(session, v.author_id)
        if person is not None:
            signers.append(
                SignerInfo(
                    name=person.name,
                    username=person.username,
                    title=person.title,
                    institution=person.institution,
                    role=roles.get(v.kind, "author"),
                    signed_at=v.created_at,
                )
            )
    template = TEMPLATES.get(report.template)
    content = dict(signed.content or {})
    status = (
        ReportStatus(report.status).value
        if signed.version == report.current_version
        else ("preliminary" if signed.kind == "preliminary" else "superseded")
    )
    return SignedReportView(
        report_id=report.id,
        study_uid=study.study_uid,
        accession_number=study.accession_number,
        study_date=study.study_date,
        study_time=study.study_time,
        study_description=study.description,
        modality=access.study_modality(session, study),
        body_part=study.body_part,
        patient_id=patient.patient_id,
        patient_issuer=patient.issuer,
        patient_name=patient.name,
        patient_sex=patient.sex,
        patient_birth_date=patient.birth_date,
        origin_name=origin.name,
        origin_code=origin.code,
        pool_name=pool.name,
        pool_code=pool.code,
        template=report.template,
        template_name=template.name if template else report.template,
        status=status,
        version=signed.version,
        kind=signed.kind,
        content=content,
        signers=signers,
        signed_at=signed.created_at,
        first_signed_at=report.signed_at,
        verify_code=report.verify_code,
        verify_path=f"/verify/{report.verify_code}" if report.verify_code else None,
        signature=signed.signature,
        key_id=signed.key_id,
        signature_valid=version_holds(key, report, signed, study.study_uid),
        amendment_reason=signed.reason if signed.kind == "amend" else None,
        positive=report.positive,
        critical=bool(report.critical),
        withdrawn=bool(content.get("withdrawn")),
    )
