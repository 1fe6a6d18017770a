"""Who may fetch a study's exported report, and the exports made from the database.

Scope (the township sees its results): administrators; any user of the study's origin
institution (its technicians above all); readers, senior readers and supervisors of the pool the
report was signed in, of the pool the study is routed to now, or of a pool asked for a
consultation on it. Anyone else gets the same 404 as for a study that does not exist.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from remote_dx.core.models import (
    Consultation,
    Delivery,
    Report,
    Role,
    Study,
    User,
    WorklistItem,
)
from remote_dx.core.settings import Settings
from remote_dx.reporting.export.dicom import encapsulated_pdf, structured_report
from remote_dx.reporting.export.fhir import diagnostic_report
from remote_dx.reporting.export.pdf import render_report_pdf
from remote_dx.reporting.export.view import SignedReportView
from remote_dx.storage.base import ObjectStore

log = logging.getLogger(__name__)

READER_ROLES = frozenset({Role.READER, Role.SENIOR_READER, Role.SUPERVISOR})
ECG_PRINTOUT_DPI = 150


def visible_study(session: Session, user: User, study_uid: str) -> Study | None:
    """The study if ``user`` may fetch its report exports, else None."""
    study = session.scalar(select(Study).where(Study.study_uid == study_uid))
    if study is None:
        return None
    role = Role(user.role)
    if role is Role.ADMIN:
        return study
    if study.origin_id == user.institution_id and role is not Role.STATISTICIAN:
        return study
    if role not in READER_ROLES:
        return None
    pool = user.institution_id
    routed = session.scalar(
        select(WorklistItem.id).where(
            WorklistItem.study_pk == study.id, WorklistItem.pool_id == pool
        )
    )
    signed_here = session.scalar(
        select(Report.id).where(Report.study_pk == study.id, Report.pool_id == pool)
    )
    consulted = session.scalar(
        select(Consultation.id).where(
            Consultation.study_pk == study.id,
            or_(Consultation.to_pool_id == pool, Consultation.from_pool_id == pool),
        )
    )
    return study if (routed or signed_here or consulted) else None


def ecg_printout(session: Session, store: ObjectStore, study: Study) -> bytes | None:
    """The 12-lead printout (PNG) for the PDF's second page, or None if it cannot be made."""
    from remote_dx.ecg.render import render_png
    from remote_dx.ecg.service import analysis_record, header_measurements, load_ecg

    try:
        ecg = load_ecg(session, store, study)
        return render_png(
            ecg,
            measurements=header_measurements(analysis_record(session, study)),
            dpi=ECG_PRINTOUT_DPI,
        )
    except Exception as exc:  # the report stands without its printout page
        log.warning("no ECG printout for the report of %s: %s", study.study_uid, exc)
        return None


def report_pdf(
    session: Session,
    store: ObjectStore | None,
    settings: Settings,
    view: SignedReportView,
    study: Study,
) -> bytes:
    printout = ecg_printout(session, store, study) if (view.is_ecg and store) else None
    return render_report_pdf(
        view, public_base_url=settings.public_base_url, ecg_printout_png=printout
    )


def report_fhir(view: SignedReportView, pdf: bytes) -> dict[str, Any]:
    return diagnostic_report(view, pdf)


def report_dicom(view: SignedReportView, pdf: bytes, kind: str) -> Any:
    """The DICOM object of a delivery channel: ``dicom-pdf`` or ``dicom-sr``."""
    if kind == "dicom-pdf":
        return encapsulated_pdf(view, pdf)
    if kind == "dicom-sr":
        return structured_report(view)
    raise ValueError(f"no DICOM object for channel {kind!r}")


def deliveries_of(session: Session, study: Study) -> list[Delivery]:
    return list(
        session.scalars(
            select(Delivery)
            .join(Report, Report.id == Delivery.report_id)
            .where(Report.study_pk == study.id)
            .order_by(Delivery.version, Delivery.id)
        )
    )
