"""Draft autosave: the reader's unsigned text, kept on the report row until it is signed.

Only the holder of the study's lease saves a draft (a reader whose lease lapsed but whom nobody
replaced still holds it, as for renewal). Saving renews nothing: the browser renews the lease
through the worklist's own endpoint. The worklist item becomes DRAFTED.

Every change of the draft (a save, an ECG confirmation carried into it) counts its revision up.
A save that names the revision it was made from (``base_revision``) is refused when the draft
has moved on since: optimistic concurrency, as HTTP's If-Match (RFC 9110 §13.1.1), so an
autosave that was already on its way when the reader confirmed the ECG's measurements cannot
put the machine's values back, and a second tab cannot overwrite the first one's text.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from remote_dx.core.clock import utcnow
from remote_dx.core.models import ECGAnalysisRecord, Report, ReportStatus, User
from remote_dx.reporting import access
from remote_dx.reporting.errors import ReportConflict
from remote_dx.reporting.schemas import ReportContent
from remote_dx.reporting.signing import resolve_template
from remote_dx.reporting.templates import ecg_prefill, study_template
from remote_dx.worklist import lease


def save_draft(
    session: Session,
    user: User,
    study_uid: str,
    *,
    content: ReportContent,
    template: str | None = None,
    base_revision: int | None = None,
    now: datetime | None = None,
) -> Report:
    """Store ``content`` as the study's draft. Does not commit.

    Raises ReportNotFound (404), NotPermitted (403: not a qualified reader of the pool),
    ReportConflict (409: not the lease holder, already signed, or ``base_revision`` given and no
    longer the draft's revision), InvalidReport (422: template).
    """
    now = now or utcnow()
    ctx = access.load(session, user, study_uid, lock=True)
    access.require_signer(user, ctx)
    report = ctx.report
    if report is not None and ReportStatus(report.status) is not ReportStatus.DRAFT:
        raise ReportConflict(
            f"the report is already signed ({ReportStatus(report.status).value}); "
            "a signed report changes only by amendment"
        )
    access.require_lease(user, ctx.item, now)
    revision = (report.draft_revision or 0) if report is not None else 0
    if base_revision is not None and base_revision != revision:
        raise ReportConflict(
            f"the draft has changed since revision {base_revision} (it is at revision "
            f"{revision}: confirmed ECG values carried into it, or a save from elsewhere); "
            "reload it and save again",
            revision=revision,
        )
    fallback = report.template if report is not None else study_template(ctx.study, ctx.modality)
    chosen = resolve_template(template, fallback)
    if report is None:
        assert ctx.item is not None  # require_lease saw it
        report = Report(
            study_pk=ctx.study.id,
            pool_id=ctx.item.pool_id,
            template=chosen.code,
            status=ReportStatus.DRAFT,
        )
        session.add(report)
    report.template = chosen.code
    report.draft = content.stored()
    report.draft_saved_at = now
    report.draft_revision = revision + 1
    report.author_id = user.id
    session.flush()
    lease.mark_drafted(session, ctx.study.id, by_user_id=user.id)
    return report


# What an ECG draft takes from the analysis; the rest (positive, withdrawn) is the reader's own.
ECG_PREFILLED = ("findings", "impression", "measurements", "rhythm", "statements", "critical")


def follow_ecg_confirmation(
    session: Session,
    study_pk: int,
    before: dict[str, Any],
    record: ECGAnalysisRecord,
) -> bool:
    """Carry the reader's newly confirmed ECG values into an already saved draft.

    An unsaved draft is built from the analysis each time it is read, so it shows them anyway;
    but once the draft is autosaved (the reader opened the ECG and typed) it keeps the machine's
    text, and the reader would have to retype the corrected values. ``before`` is what the
    analysis pre-filled before this confirmation: a field of the draft that still equals it
    (untouched by the reader) takes the new value; a field the reader edited stays as written.
    Only a DRAFT report changes; a signed one changes only by amendment. Does not commit.
    Answers whether the draft changed.
    """
    report = session.scalar(select(Report).where(Report.study_pk == study_pk))
    if (
        report is None
        or ReportStatus(report.status) is not ReportStatus.DRAFT
        or report.draft is None
    ):
        return False
    after = ecg_prefill(record)
    draft = dict(report.draft)
    changed = False
    for key in ECG_PREFILLED:
        if before.get(key) != after.get(key) and draft.get(key) == before.get(key):
            draft[key] = after[key]
            changed = True
    if changed:
        report.draft = draft  # a new dict: the JSON column sees the change
        report.draft_revision = (report.draft_revision or 0) + 1  # older autosaves now refused
    return changed
