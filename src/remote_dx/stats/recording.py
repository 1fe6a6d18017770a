"""Recording a re-use of a recognised result (结果互认): the fact the registry lookup lacks.

A lookup (:func:`remote_dx.reporting.recognition.lookup`) says which results *could* be accepted;
only the member hospital knows whether it then accepted one instead of examining again. It says
so with ``POST /api/v1/recognition/{verify_code}/use``; each (result, institution) counts once.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from remote_dx.core import errors
from remote_dx.core.clock import utcnow
from remote_dx.core.models import (
    RecognitionUse,
    Report,
    ReportStatus,
    ReportVersion,
    Role,
    User,
)

USER_ROLES = frozenset(
    {Role.TECHNICIAN, Role.READER, Role.SENIOR_READER, Role.SUPERVISOR, Role.ADMIN}
)


def record_use(
    session: Session, user: User, verify_code: str, *, now: datetime | None = None
) -> tuple[RecognitionUse, bool]:
    """Record that ``user``'s institution accepted the result ``verify_code``; commits.

    Returns (the use, created). Raises NotFound (no such signed result), Forbidden (a role that
    does not take exams) or Invalid (a result that is not final: preliminary or withdrawn).
    """
    if Role(user.role) not in USER_ROLES:
        raise errors.Forbidden(f"a {Role(user.role).value} does not take exams")
    report = session.scalar(select(Report).where(Report.verify_code == verify_code.strip()))
    if report is None or ReportStatus(report.status) is ReportStatus.DRAFT:
        raise errors.NotFound(f"no signed result with code {verify_code!r}")
    if ReportStatus(report.status) not in (ReportStatus.FINAL, ReportStatus.AMENDED):
        raise errors.Invalid("only a final result can be recognised (this one awaits confirmation)")
    content = session.scalar(
        select(ReportVersion.content).where(
            ReportVersion.report_id == report.id, ReportVersion.version == report.current_version
        )
    )
    if (content or {}).get("withdrawn"):
        raise errors.Invalid("this result was withdrawn by an amendment")
    existing = session.scalar(
        select(RecognitionUse).where(
            RecognitionUse.report_id == report.id,
            RecognitionUse.institution_id == user.institution_id,
        )
    )
    if existing is not None:
        return existing, False
    use = RecognitionUse(
        report_id=report.id,
        study_pk=report.study_pk,
        exam=report.template,
        institution_id=user.institution_id,
        used_by_id=user.id,
        used_at=now or utcnow(),
    )
    session.add(use)
    session.commit()
    return use, True
