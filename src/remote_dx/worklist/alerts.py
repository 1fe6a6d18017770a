"""Critical results (危急值): listing, acknowledgement by a named person, reader-raised alerts,
re-notification.

An alert is raised by the ECG analysis (:func:`remote_dx.ecg.service.record_analysis`) or by a
reader while reading (:func:`raise_alert`). It goes to the origin township, where it must be
acknowledged by a named clinician (``acknowledged_by_name``; the account that recorded it is kept
beside the name). Until then it is notified again every ``RDX_ALERT_RENOTIFY_MINUTES``
(:func:`renotify_unacknowledged`, run by the sweep) and supervisors see it with its age.

Who sees an alert (:func:`alert_visibility`): readers, senior readers and supervisors of the pool
it was raised for, or of the pool now holding the study (after an escalation); technicians of the
origin institution; administrators. Every step keeps its time: ``raised_at``,
``last_notified_at`` (with ``notify_count``), ``acknowledged_at``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, case, false, func, or_, select, true, update
from sqlalchemy.orm import Session, aliased, sessionmaker

from remote_dx.core.clock import utcnow
from remote_dx.core.models import (
    AlertSource,
    CriticalAlert,
    Institution,
    Patient,
    Role,
    Study,
    User,
    WorklistItem,
)
from remote_dx.worklist.lease import ItemNotFound, LeaseConflict, NotAllowed
from remote_dx.worklist.schemas import AlertPage, AlertView
from remote_dx.worklist.service import MAX_PAGE, READER_ROLES, visibility

log = logging.getLogger(__name__)

_origin = aliased(Institution, name="origin")
_pool = aliased(Institution, name="pool")
_acker = aliased(User, name="acker")


def alert_visibility(user: User) -> ColumnElement[bool]:
    """The condition an alert (outer-joined to its study's worklist item) meets for ``user``."""
    role = Role(user.role)
    if role is Role.ADMIN:
        return true()
    if role in READER_ROLES:
        return or_(
            CriticalAlert.pool_id == user.institution_id,
            WorklistItem.pool_id == user.institution_id,
        )
    if role is Role.TECHNICIAN:
        return CriticalAlert.origin_id == user.institution_id
    return false()


def _select() -> Any:
    return (
        select(
            CriticalAlert,
            Study.study_uid,
            Patient.patient_id,
            Patient.name,
            _origin.name,
            _origin.code,
            _pool.name,
            _acker.username,
        )
        .select_from(CriticalAlert)
        .join(Study, Study.id == CriticalAlert.study_pk)
        .join(Patient, Patient.id == Study.patient_pk)
        .join(_origin, _origin.id == CriticalAlert.origin_id)
        .join(_pool, _pool.id == CriticalAlert.pool_id)
        .outerjoin(WorklistItem, WorklistItem.study_pk == CriticalAlert.study_pk)
        .outerjoin(_acker, _acker.id == CriticalAlert.acknowledged_by_id)
    )


def _view(row: Any, now: datetime) -> AlertView:
    alert, study_uid, patient_id, patient_name, origin, origin_code, pool, acker = row
    end = alert.acknowledged_at or now
    return AlertView(
        id=alert.id,
        study_uid=study_uid,
        patient_id=patient_id,
        patient_name=patient_name,
        origin=origin,
        origin_code=origin_code,
        pool=pool,
        source=str(AlertSource(alert.source).value),
        reasons=list(alert.reasons or []),
        raised_at=alert.raised_at,
        acknowledged=alert.acknowledged_at is not None,
        acknowledged_at=alert.acknowledged_at,
        acknowledged_by=acker,
        acknowledged_by_name=alert.acknowledged_by_name,
        acknowledgement_note=alert.acknowledgement_note,
        notify_count=alert.notify_count,
        last_notified_at=alert.last_notified_at,
        age_seconds=round((end - alert.raised_at).total_seconds(), 3),
    )


def list_alerts(
    session: Session,
    user: User,
    *,
    unacknowledged: bool | None = None,
    study_uid: str | None = None,
    alert_ids: Sequence[int] = (),
    limit: int = 50,
    offset: int = 0,
) -> AlertPage:
    """Alerts ``user`` may see: unacknowledged first (oldest first: the most pressing), then
    acknowledged ones (newest first). One statement for the page and one count."""
    now = utcnow()
    conditions = [alert_visibility(user)]
    if unacknowledged is not None:
        pending = CriticalAlert.acknowledged_at.is_(None)
        conditions.append(pending if unacknowledged else ~pending)
    if study_uid is not None:
        conditions.append(Study.study_uid == study_uid)
    if alert_ids:
        conditions.append(CriticalAlert.id.in_(list(alert_ids)))
    acked = CriticalAlert.acknowledged_at.is_not(None)
    rows = session.execute(
        _select()
        .where(*conditions)
        .order_by(
            acked,
            case((CriticalAlert.acknowledged_at.is_(None), CriticalAlert.raised_at)),
            CriticalAlert.raised_at.desc(),
            CriticalAlert.id,
        )
        .limit(max(1, min(limit, MAX_PAGE)))
        .offset(max(0, offset))
    ).all()
    total = session.scalar(
        select(func.count())
        .select_from(CriticalAlert)
        .join(Study, Study.id == CriticalAlert.study_pk)
        .outerjoin(WorklistItem, WorklistItem.study_pk == CriticalAlert.study_pk)
        .where(*conditions)
    )
    return AlertPage(items=[_view(row, now) for row in rows], total=total or 0)


def _one(session: Session, user: User, alert_id: int, now: datetime) -> AlertView:
    row = session.execute(
        _select().where(CriticalAlert.id == alert_id, alert_visibility(user))
    ).one_or_none()
    if row is None:
        raise ItemNotFound(f"critical alert {alert_id} not found")
    return _view(row, now)


def get_alert(session: Session, user: User, alert_id: int) -> AlertView:
    return _one(session, user, alert_id, utcnow())


def acknowledge(
    session: Session,
    user: User,
    alert_id: int,
    *,
    name: str,
    note: str | None = None,
    now: datetime | None = None,
) -> AlertView:
    """Record that the named clinician ``name`` took the critical value. Commits.

    By a technician of the origin institution, a reader/supervisor of the pool, or an
    administrator. Raises :class:`ItemNotFound` (404: absent or not visible), :class:`NotAllowed`
    (403: a role that does not take alerts) or :class:`LeaseConflict` (409: already
    acknowledged — the first acknowledgement stands).
    """
    now = now or utcnow()
    name = name.strip()
    if not name:
        raise ValueError("the name of the person who received the critical value is required")
    current = _one(session, user, alert_id, now)
    if Role(user.role) not in {*READER_ROLES, Role.TECHNICIAN, Role.ADMIN}:
        raise NotAllowed(f"a {Role(user.role).value} cannot acknowledge critical alerts")
    if current.acknowledged:
        raise LeaseConflict(
            f"critical alert {alert_id} was already acknowledged by {current.acknowledged_by_name}"
            f" at {current.acknowledged_at.isoformat() if current.acknowledged_at else '?'}"
        )
    result = session.execute(
        update(CriticalAlert)
        .where(CriticalAlert.id == alert_id, CriticalAlert.acknowledged_at.is_(None))
        .values(
            acknowledged_at=now,
            acknowledged_by_id=user.id,
            acknowledged_by_name=name,
            acknowledgement_note=(note or "").strip() or None,
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        raise LeaseConflict(f"critical alert {alert_id} was acknowledged meanwhile")
    session.commit()
    log.info(
        "critical alert %s (study %s) acknowledged by %s, recorded by %s after %.0f s",
        alert_id,
        current.study_uid,
        name,
        user.username,
        (now - current.raised_at).total_seconds(),
    )
    return _one(session, user, alert_id, now)


def raise_alert(
    session: Session,
    user: User,
    study_uid: str,
    reasons: Sequence[dict[str, Any]],
    *,
    now: datetime | None = None,
) -> AlertView:
    """A reader of the study's pool marks a critical finding while reading (source READER).
    Commits. 404 if the study is not on a worklist the reader sees; 403 for other roles."""
    now = now or utcnow()
    if Role(user.role) not in READER_ROLES:
        raise NotAllowed(f"a {Role(user.role).value} cannot raise critical alerts; readers do")
    if not reasons:
        raise ValueError("give at least one reason")
    row = session.execute(
        select(Study.id, Study.origin_id, WorklistItem.pool_id)
        .join(WorklistItem, WorklistItem.study_pk == Study.id)
        .where(Study.study_uid == study_uid, visibility(user))
    ).one_or_none()
    if row is None:
        raise ItemNotFound(f"study {study_uid} not found")
    study_pk, origin_id, pool_id = row
    alert = CriticalAlert(
        study_pk=study_pk,
        pool_id=pool_id,
        origin_id=origin_id,
        source=AlertSource.READER,
        reasons=[dict(r) for r in reasons],
        raised_at=now,
    )
    session.add(alert)
    session.commit()
    log.warning(
        "CRITICAL result raised by reader %s on %s: %s",
        user.username,
        study_uid,
        "; ".join(str(r.get("zh") or r.get("code")) for r in reasons),
    )
    return _one(session, user, alert.id, now)


def renotify_unacknowledged(
    sessions: sessionmaker[Session], now: datetime | None = None, every_minutes: float = 5.0
) -> list[int]:
    """Notify again every alert unacknowledged for ``every_minutes`` since it was raised or last
    notified: ``notify_count`` + 1, ``last_notified_at`` = now, and a log line. Returns the alert
    ids. Several sweepers may run it at once: each alert is bumped by one conditional UPDATE."""
    now = now or utcnow()
    cutoff = now - timedelta(minutes=every_minutes)
    due = (
        CriticalAlert.acknowledged_at.is_(None),
        func.coalesce(CriticalAlert.last_notified_at, CriticalAlert.raised_at) <= cutoff,
    )
    notified: list[int] = []
    with sessions() as session:
        rows = session.execute(
            select(
                CriticalAlert.id,
                CriticalAlert.notify_count,
                CriticalAlert.raised_at,
                Study.study_uid,
            )
            .join(Study, Study.id == CriticalAlert.study_pk)
            .where(*due)
            .order_by(CriticalAlert.raised_at)
        ).all()
        for alert_id, count, raised_at, study_uid in rows:
            result = session.execute(
                update(CriticalAlert)
                .where(CriticalAlert.id == alert_id, CriticalAlert.notify_count == count, *due)
                .values(notify_count=count + 1, last_notified_at=now)
                .execution_options(synchronize_session=False)
            )
            if result.rowcount == 1:  # type: ignore[attr-defined]
                notified.append(alert_id)
                log.warning(
                    "critical alert %s (study %s) still unacknowledged after %.0f min: "
                    "notification %d",
                    alert_id,
                    study_uid,
                    (now - raised_at).total_seconds() / 60,
                    count + 1,
                )
        session.commit()
    return notified
