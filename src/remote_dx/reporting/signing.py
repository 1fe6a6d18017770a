"""The report's state machine: sign, confirm (second signature), amend.

::

    (none) ──draft──▶ draft ──sign (senior, or no second signature needed)──▶ final
                        │                                                      │ ▲
                        └──sign (junior, second signature required)──▶ preliminary
                                                     confirm (senior) ──▶ final │
                                                                               amend ──▶ amended
                                                                       (amend again: amended)

Every signature writes an immutable :class:`ReportVersion` (1, 2, …) holding the content, the
signed payload, the Ed25519 signature and the key id; ``Report.current_version`` names the newest.
Amending needs a reason and keeps the older versions readable; the verification code stays the
same, so every printed version leads to the current one (decided here: the code names the report,
the version number names the text).

After a result becomes deliverable (final, confirmed or amended — not a preliminary signature)
the hooks in :data:`remote_dx.reporting.service.on_signed` run inside the same transaction.
A critical result raises a :class:`CriticalAlert` (source ``reader``) for the origin township when
the study has none yet (neither from the ECG analysis nor raised by the reader while reading).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from remote_dx.core.clock import utcnow
from remote_dx.core.models import (
    AlertSource,
    CriticalAlert,
    Institution,
    Report,
    ReportStatus,
    ReportVersion,
    User,
)
from remote_dx.reporting import access
from remote_dx.reporting.errors import InvalidReport, NotPermitted, ReportConflict
from remote_dx.reporting.keys import HubKey
from remote_dx.reporting.schemas import ReportContent
from remote_dx.reporting.templates import (
    TEMPLATES,
    Template,
    UnknownTemplate,
    flags,
    get_template,
    study_template,
)
from remote_dx.reporting.verify import SIGNED_CONTENT_KEYS, new_code
from remote_dx.worklist import lease
from remote_dx.worklist.schemas import iso_utc

log = logging.getLogger(__name__)

SignedHook = Callable[[Session, Report, ReportVersion], None]


def resolve_template(code: str | None, fallback: str) -> Template:
    try:
        return get_template(code or fallback)
    except UnknownTemplate as exc:
        raise InvalidReport(str(exc)) from exc


def _checked(content: dict[str, Any]) -> dict[str, Any]:
    """Content read back from a draft is validated again (the model may have moved on)."""
    try:
        return ReportContent.model_validate(content).stored()
    except ValueError as exc:
        raise InvalidReport(f"the saved draft is not a valid report: {exc}") from exc


def _require_signable(content: dict[str, Any]) -> None:
    if not str(content.get("impression") or "").strip():
        raise InvalidReport("the impression (诊断意见) is empty; a report needs one to be signed")


def person(session: Session, user: User) -> dict[str, Any]:
    institution = session.get(Institution, user.institution_id)
    return {
        "name": user.full_name,
        "username": user.username,
        "title": user.title,
        "institution": institution.name if institution else None,
    }


def build_payload(
    session: Session,
    ctx: access.StudyContext,
    report: Report,
    template: Template,
    content: dict[str, Any],
    *,
    signer: User,
    author: User | None,
    version: int,
    status: ReportStatus,
    signed_at: datetime,
    key: HubKey,
) -> dict[str, Any]:
    """What the signature covers: who, whose exam, what was said, when, which version."""
    study = ctx.study
    payload: dict[str, Any] = {
        "study_uid": study.study_uid,
        "patient_id": ctx.patient.patient_id,
        "patient_name": ctx.patient.name,
        "issuer": ctx.patient.issuer,
        "exam": {
            "template": template.code,
            "name": template.name,
            "modality": ctx.modality,
            "description": study.description,
            "study_date": study.study_date,
            "accession_number": study.accession_number,
            "origin": ctx.origin.name,
            "reading_institution": ctx.pool.name if ctx.pool else None,
        },
        "signer": person(session, signer),
        "author": person(session, author) if author is not None else None,
        "signed_at": iso_utc(signed_at),
        "version": version,
        "status": status.value,
        "verify_code": report.verify_code,
        "key_id": key.key_id,
    }
    for name in SIGNED_CONTENT_KEYS:
        payload[name] = content.get(name)
    return payload


def _add_version(
    session: Session,
    ctx: access.StudyContext,
    report: Report,
    template: Template,
    content: dict[str, Any],
    *,
    kind: str,
    status: ReportStatus,
    signer: User,
    author: User | None,
    reason: str | None,
    key: HubKey,
    now: datetime,
) -> ReportVersion:
    number = (report.current_version or 0) + 1
    payload = build_payload(
        session,
        ctx,
        report,
        template,
        content,
        signer=signer,
        author=author,
        version=number,
        status=status,
        signed_at=now,
        key=key,
    )
    version = ReportVersion(
        report_id=report.id,
        version=number,
        kind=kind,
        content=content,
        reason=reason,
        author_id=signer.id,
        created_at=now,
        payload=payload,
        signature=key.sign(payload),
        key_id=key.key_id,
    )
    session.add(version)
    positive, critical = flags(template, content)
    report.current_version = number
    report.status = status
    report.template = template.code
    report.positive = positive
    report.critical = critical
    report.draft = None
    report.draft_saved_at = None
    if ctx.item is not None:
        report.pool_id = ctx.item.pool_id
    session.flush()
    return version


def _raise_reader_alert(
    session: Session,
    ctx: access.StudyContext,
    report: Report,
    content: dict[str, Any],
    now: datetime,
) -> None:
    if not report.critical or ctx.item is None:
        return
    # One alert per study is enough: the machine's (ECG analysis) or the one the reader raised
    # while reading (worklist.alerts.raise_alert) already reaches the township's named person.
    exists = session.scalar(
        select(CriticalAlert.id).where(CriticalAlert.study_pk == ctx.study.id).limit(1)
    )
    if exists is not None:
        return
    session.add(
        CriticalAlert(
            study_pk=ctx.study.id,
            pool_id=ctx.item.pool_id,
            origin_id=ctx.study.origin_id,
            source=AlertSource.READER,
            reasons=[
                {
                    "code": "reader",
                    "zh": str(content.get("impression") or ""),
                    "verify_code": report.verify_code,
                }
            ],
            raised_at=now,
        )
    )
    log.warning("CRITICAL result signed for study %s (reader)", ctx.study.study_uid)


def _deliverable(session: Session, report: Report, version: ReportVersion) -> None:
    from remote_dx.reporting.service import on_signed  # the hook list lives with the facade

    for hook in list(on_signed):
        hook(session, report, version)


def _after_signature(session: Session, ctx: access.StudyContext, user: User, final: bool) -> None:
    lease.mark_signed(session, ctx.study.id, by_user_id=user.id, final=final)
    if ctx.item is not None:
        session.refresh(ctx.item)  # the lease module updated the row behind the ORM


def sign(
    session: Session,
    user: User,
    study_uid: str,
    *,
    key: HubKey,
    template: str | None = None,
    content: ReportContent | None = None,
    now: datetime | None = None,
) -> tuple[Report, ReportVersion]:
    """First signature: FINAL, or PRELIMINARY for a junior where a second signature is required.

    Signs ``content`` if given, else the saved draft. Does not commit.
    Raises ReportNotFound (404), NotPermitted (403), ReportConflict (409), InvalidReport (422).
    """
    now = now or utcnow()
    ctx = access.load(session, user, study_uid, lock=True)
    access.require_signer(user, ctx)
    access.require_no_other_holder(user, ctx.item, now)
    report = ctx.report
    if report is not None and ReportStatus(report.status) is not ReportStatus.DRAFT:
        status = ReportStatus(report.status)
        hint = "confirm it" if status is ReportStatus.PRELIMINARY else "amend it"
        raise ReportConflict(f"the report is already signed ({status.value}); {hint} instead")
    if content is not None:
        body = content.stored()
    elif report is not None and report.draft:
        body = _checked(report.draft)
    else:
        raise InvalidReport("nothing to sign: send the content or save a draft first")
    if body.get("withdrawn"):
        raise InvalidReport("a first signature cannot withdraw the result")
    _require_signable(body)
    fallback = report.template if report is not None else study_template(ctx.study, ctx.modality)
    chosen = resolve_template(template, fallback)
    if report is None:
        report = Report(study_pk=ctx.study.id, pool_id=ctx.item.pool_id, template=chosen.code)  # type: ignore[union-attr]
        session.add(report)
        session.flush()
    final = not (ctx.item is not None and ctx.item.second_signature_required) or access.is_senior(
        user
    )
    status = ReportStatus.FINAL if final else ReportStatus.PRELIMINARY
    report.verify_code = report.verify_code or new_code(session)
    report.author_id = report.author_id or user.id
    report.signed_by_id = user.id
    report.signed_at = now
    version = _add_version(
        session,
        ctx,
        report,
        chosen,
        body,
        kind="final" if final else "preliminary",
        status=status,
        signer=user,
        author=None,
        reason=None,
        key=key,
        now=now,
    )
    _after_signature(session, ctx, user, final)
    _raise_reader_alert(session, ctx, report, body, now)
    log.info("report of %s signed %s v%d by %s", study_uid, status.value, 1, user.username)
    if final:
        _deliverable(session, report, version)
    return report, version


def confirm(
    session: Session,
    user: User,
    study_uid: str,
    *,
    key: HubKey,
    content: ReportContent | None = None,
    now: datetime | None = None,
) -> tuple[Report, ReportVersion]:
    """Second signature: a senior qualified reader of the pool makes a preliminary report FINAL,
    optionally with edited content. Does not commit."""
    now = now or utcnow()
    ctx = access.load(session, user, study_uid, lock=True)
    access.require_signer(user, ctx)
    report = ctx.report
    if report is None or ReportStatus(report.status) is not ReportStatus.PRELIMINARY:
        state = "not signed" if report is None else ReportStatus(report.status).value
        raise ReportConflict(f"only a preliminary report can be confirmed (this one: {state})")
    if not access.is_senior(user):
        raise NotPermitted(
            f"a junior reader ({user.title or 'untitled'}) cannot confirm; the second signature "
            "needs a senior reader (副主任医师/主任医师)"
        )
    if report.signed_by_id == user.id:
        raise NotPermitted("the second signature must come from another reader")
    access.require_no_other_holder(user, ctx.item, now)
    previous = session.scalar(
        select(ReportVersion).where(
            ReportVersion.report_id == report.id, ReportVersion.version == report.current_version
        )
    )
    assert previous is not None
    body = content.stored() if content is not None else dict(previous.content)
    if body.get("withdrawn"):
        raise InvalidReport("confirming cannot withdraw the result; amend it after confirming")
    _require_signable(body)
    author = session.get(User, report.signed_by_id) if report.signed_by_id else None
    template = TEMPLATES.get(report.template) or resolve_template(None, "imaging")
    report.confirmed_by_id = user.id
    report.confirmed_at = now
    version = _add_version(
        session,
        ctx,
        report,
        template,
        body,
        kind="confirm",
        status=ReportStatus.FINAL,
        signer=user,
        author=author,
        reason=None,
        key=key,
        now=now,
    )
    _after_signature(session, ctx, user, True)
    _raise_reader_alert(session, ctx, report, body, now)
    log.info("report of %s confirmed by %s", study_uid, user.username)
    _deliverable(session, report, version)
    return report, version


def amend(
    session: Session,
    user: User,
    study_uid: str,
    *,
    key: HubKey,
    content: ReportContent,
    reason: str,
    now: datetime | None = None,
) -> tuple[Report, ReportVersion]:
    """A new version of a final (or already amended) report, with the reason; status AMENDED.
    Where a second signature is required only a senior amends. Does not commit."""
    now = now or utcnow()
    reason = (reason or "").strip()
    if not reason:
        raise InvalidReport("an amendment needs a reason")
    ctx = access.load(session, user, study_uid, lock=True)
    access.require_signer(user, ctx)
    report = ctx.report
    if report is None or ReportStatus(report.status) not in (
        ReportStatus.FINAL,
        ReportStatus.AMENDED,
    ):
        state = "not signed" if report is None else ReportStatus(report.status).value
        raise ReportConflict(f"only a final report can be amended (this one: {state})")
    if ctx.item is not None and ctx.item.second_signature_required and not access.is_senior(user):
        raise NotPermitted("this study needs a senior's signature; a junior cannot amend it")
    access.require_no_other_holder(user, ctx.item, now)
    body = content.stored()
    if not body.get("withdrawn"):
        _require_signable(body)
    previous = session.scalar(
        select(ReportVersion).where(
            ReportVersion.report_id == report.id, ReportVersion.version == report.current_version
        )
    )
    author = session.get(User, previous.author_id) if previous is not None else None
    template = TEMPLATES.get(report.template) or resolve_template(None, "imaging")
    version = _add_version(
        session,
        ctx,
        report,
        template,
        body,
        kind="amend",
        status=ReportStatus.AMENDED,
        signer=user,
        author=author if author is not None and author.id != user.id else None,
        reason=reason,
        key=key,
        now=now,
    )
    _raise_reader_alert(session, ctx, report, body, now)
    log.info(
        "report of %s amended (v%d) by %s: %s", study_uid, version.version, user.username, reason
    )
    _deliverable(session, report, version)
    return report, version
