"""Sending signed reports back to the township (结果互认): one :class:`Delivery` row per
(report version, channel), retried until delivered.

- ``fhir``: always; the DiagnosticReport is served by the API (the township pulls it), so the
  row is ``available`` at once.
- ``dicom-pdf`` and ``dicom-sr``: only when the origin institution has a return AE (title, host,
  port); sent by C-STORE with our push client (:func:`remote_dx.ingest.push.push_files`), as the
  hub's AE title. Only a final (or amended) version is sent: a preliminary one awaits its
  second signature.

:func:`on_signed` is the reporting service's hook (called with the session, the report and the
signed version, inside the signing transaction): it adds the rows, marks older undelivered rows of
the same report ``superseded`` (an amendment is delivered instead), and once the transaction
commits enqueues the Celery task ``remote_dx.deliver_report`` for each new row.
:func:`attempt_delivery` is that task's body: idempotent (a delivered or superseded row is left
alone; the DICOM SOP Instance UIDs derive from report, version and kind, so a repeated C-STORE is
a duplicate to the receiver), counts the attempt before sending, and answers whether to retry.
:func:`reconcile_deliveries` finds rows whose message was lost (the database, not the broker, is
the source of truth).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import event, select, update
from sqlalchemy.orm import Session, sessionmaker

from remote_dx.core.clock import utcnow
from remote_dx.core.db import get_sessionmaker
from remote_dx.core.models import (
    Delivery,
    DeliveryChannel,
    Institution,
    Report,
    ReportStatus,
    ReportVersion,
    Study,
)
from remote_dx.core.settings import Settings
from remote_dx.reporting.export.service import report_dicom, report_pdf
from remote_dx.reporting.export.view import NoSignedReport, load_view
from remote_dx.storage.base import ObjectStore

log = logging.getLogger(__name__)

PENDING = "pending"
RETRYING = "retrying"
DELIVERED = "delivered"
FAILED = "failed"
SUPERSEDED = "superseded"
AVAILABLE = "available"  # served by the API (FHIR): nothing to send
OPEN_STATUSES = (PENDING, RETRYING)
DICOM_CHANNELS = (DeliveryChannel.DICOM_PDF, DeliveryChannel.DICOM_SR)
TASK_NAME = "remote_dx.deliver_report"
_SESSION_KEY = "rdx_new_deliveries"
_LISTENING_KEY = "rdx_delivery_listeners"


def return_target(institution: Institution) -> str | None:
    """``AE@host:port`` of the institution's PACS, or None when it has none configured."""
    if institution.return_ae_title and institution.return_host and institution.return_port:
        return f"{institution.return_ae_title}@{institution.return_host}:{institution.return_port}"
    return None


def _version_number(version: Any) -> int:
    return int(version.version if isinstance(version, ReportVersion) else version)


def create_deliveries(session: Session, report: Report, version: Any) -> list[Delivery]:
    """Add the delivery rows of a newly signed ``version`` of ``report`` (not committed)."""
    number = _version_number(version)
    session.flush()
    study = session.get(Study, report.study_pk)
    assert study is not None
    origin = session.get(Institution, study.origin_id)
    assert origin is not None
    existing = {
        (d.version, DeliveryChannel(d.channel))
        for d in session.scalars(select(Delivery).where(Delivery.report_id == report.id))
    }
    # An undelivered older version is not worth sending once a newer one exists.
    session.execute(
        update(Delivery)
        .where(
            Delivery.report_id == report.id,
            Delivery.version < number,
            Delivery.status.in_(OPEN_STATUSES),
        )
        .values(status=SUPERSEDED, error="a newer version of the report was signed")
    )
    now = utcnow()
    rows: list[Delivery] = []
    if (number, DeliveryChannel.FHIR) not in existing:
        rows.append(
            Delivery(
                report_id=report.id,
                version=number,
                channel=DeliveryChannel.FHIR,
                target=f"/api/v1/studies/{study.study_uid}/report/fhir",
                status=AVAILABLE,
                created_at=now,
                delivered_at=now,
            )
        )
    target = return_target(origin)
    if target and ReportStatus(report.status) != ReportStatus.PRELIMINARY:
        for channel in DICOM_CHANNELS:
            if (number, channel) not in existing:
                rows.append(
                    Delivery(
                        report_id=report.id,
                        version=number,
                        channel=channel,
                        target=target,
                        status=PENDING,
                        created_at=now,
                    )
                )
    session.add_all(rows)
    session.flush()
    _enqueue_after_commit(session, [r.id for r in rows if r.status == PENDING])
    return rows


def on_signed(session: Session, report: Report, version: Any) -> None:
    """The reporting service's ``on_signed`` hook."""
    create_deliveries(session, report, version)


def register_hooks() -> bool:
    """Add :func:`on_signed` to ``remote_dx.reporting.service.on_signed`` (once); False if the
    reporting service is not there."""
    try:
        from remote_dx.reporting import service
    except ImportError:
        return False
    hooks = getattr(service, "on_signed", None)
    if hooks is None:
        return False
    if on_signed not in hooks:
        hooks.append(on_signed)
    return True


# --- enqueueing ---------------------------------------------------------------------------------


def _enqueue_after_commit(session: Session, ids: list[int]) -> None:
    if not ids:
        return
    session.info.setdefault(_SESSION_KEY, []).extend(ids)
    # Listeners stay for the session's life (removing one while SQLAlchemy dispatches the event
    # is not allowed); with nothing pending they do nothing.
    if not session.info.get(_LISTENING_KEY):
        session.info[_LISTENING_KEY] = True
        event.listen(session, "after_commit", _after_commit)
        event.listen(session, "after_rollback", _after_rollback)


def _after_commit(session: Session) -> None:
    for delivery_id in session.info.pop(_SESSION_KEY, None) or []:
        enqueue_delivery(delivery_id)


def _after_rollback(session: Session) -> None:
    session.info.pop(_SESSION_KEY, None)


def enqueue_delivery(delivery_id: int, countdown: float | None = None) -> bool:
    """Send the ``deliver_report`` task; False (logged) if the broker refused — the reconciler
    sends it later."""
    from remote_dx import tasks  # the Celery app lives above this package

    try:
        tasks.deliver_report.apply_async(
            args=[delivery_id],
            countdown=countdown,
            queue=tasks.current_settings().broker_queue,
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
        )
        return True
    except Exception as exc:
        log.warning("could not enqueue delivery %s: %s", delivery_id, exc)
        return False


# --- sending ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeliveryOutcome:
    delivery_id: int
    status: str
    attempts: int = 0
    error: str | None = None

    @property
    def retry(self) -> bool:
        return self.status == RETRYING

    def as_dict(self) -> dict[str, Any]:
        return {
            "delivery_id": self.delivery_id,
            "status": self.status,
            "attempts": self.attempts,
            "error": self.error,
        }


def backoff_seconds(settings: Settings, attempts: int) -> float:
    """Delay before attempt ``attempts + 1``: doubling from ``delivery_retry_seconds``."""
    delay = settings.delivery_retry_seconds * (2 ** max(0, attempts - 1))
    return float(min(delay, settings.delivery_retry_max_seconds))


@dataclass(frozen=True)
class _Job:
    study_uid: str
    channel: DeliveryChannel
    ae_title: str
    host: str
    port: int
    dataset: Any


def _prepare(
    session: Session, delivery: Delivery, settings: Settings, store: ObjectStore | None
) -> _Job | DeliveryOutcome:
    report = session.get(Report, delivery.report_id)
    assert report is not None
    study = session.get(Study, report.study_pk)
    assert study is not None
    if delivery.version != report.current_version:
        delivery.status = SUPERSEDED
        delivery.error = f"version {report.current_version} replaced version {delivery.version}"
        return DeliveryOutcome(delivery.id, SUPERSEDED, delivery.attempts, delivery.error)
    origin = session.get(Institution, study.origin_id)
    assert origin is not None
    if return_target(origin) is None:
        delivery.status = FAILED
        delivery.error = f"{origin.name} has no return AE configured any more"
        return DeliveryOutcome(delivery.id, FAILED, delivery.attempts, delivery.error)
    try:
        view = load_view(session, study.study_uid, settings=settings)
    except NoSignedReport as exc:
        delivery.status = FAILED
        delivery.error = str(exc)
        return DeliveryOutcome(delivery.id, FAILED, delivery.attempts, delivery.error)
    channel = DeliveryChannel(delivery.channel)
    pdf = (
        report_pdf(session, store, settings, view, study)
        if channel is DeliveryChannel.DICOM_PDF
        else b""
    )
    dataset = report_dicom(view, pdf, channel.value)
    return _Job(
        study.study_uid,
        channel,
        origin.return_ae_title or "",
        origin.return_host or "",
        int(origin.return_port or 0),
        dataset,
    )


def send_dataset(
    dataset: Any, *, host: str, port: int, calling_ae: str, called_ae: str
) -> str | None:
    """C-STORE one data set (written to a temporary Part 10 file for the push client); the
    failure reason, or None when stored."""
    from remote_dx.ingest.push import push_files

    with tempfile.TemporaryDirectory(prefix="rdx-delivery-") as folder:
        path = Path(folder) / f"{dataset.SOPInstanceUID}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        result = push_files(
            [path], host=host, port=port, calling_ae=calling_ae, called_ae=called_ae, progress=False
        )
    if result.ok and result.sent == 1:
        return None
    return "; ".join(f.reason for f in result.failed) or "not stored"


def attempt_delivery(
    settings: Settings,
    delivery_id: int,
    *,
    store: ObjectStore | None = None,
    sessions: sessionmaker[Session] | None = None,
) -> DeliveryOutcome:
    """Try one delivery once; the outcome says delivered, retrying (try again later), failed
    (given up after ``delivery_max_attempts``), superseded or unknown."""
    if store is None:
        from remote_dx.storage.factory import get_store

        store = get_store(settings)
    sessions = sessions or get_sessionmaker(settings)
    with sessions() as session:
        delivery = session.get(Delivery, delivery_id)
        if delivery is None:
            return DeliveryOutcome(delivery_id, "unknown", 0, "no such delivery")
        if delivery.status not in OPEN_STATUSES:
            return DeliveryOutcome(delivery_id, delivery.status, delivery.attempts, delivery.error)
        job = _prepare(session, delivery, settings, store)
        if isinstance(job, DeliveryOutcome):
            session.commit()
            return job
        # Counted before sending: a worker killed mid-send still used up an attempt.
        delivery.attempts += 1
        attempts = delivery.attempts
        session.commit()

    error = send_dataset(
        job.dataset,
        host=job.host,
        port=job.port,
        calling_ae=settings.ae_title,
        called_ae=job.ae_title,
    )
    with sessions() as session:
        delivery = session.get(Delivery, delivery_id)
        assert delivery is not None
        if error is None:
            delivery.status = DELIVERED
            delivery.error = None
            delivery.delivered_at = utcnow()
            log.info("delivered %s of %s to %s", job.channel.value, job.study_uid, delivery.target)
        else:
            delivery.status = RETRYING if attempts < settings.delivery_max_attempts else FAILED
            delivery.error = error
            log.warning(
                "delivery %s (%s of %s) attempt %d: %s",
                delivery_id,
                job.channel.value,
                job.study_uid,
                attempts,
                error,
            )
        session.commit()
        return DeliveryOutcome(delivery_id, delivery.status, attempts, delivery.error)


def reconcile_deliveries(
    sessions: sessionmaker[Session], settings: Settings, now: datetime | None = None
) -> list[int]:
    """Open deliveries whose next attempt is overdue by ``reconcile_after_seconds`` (their
    message was lost): the task is sent again by the caller. The due time is estimated from the
    creation time and the backoff of the attempts made, so no schedule column is needed."""
    now = now or utcnow()
    grace = timedelta(seconds=settings.reconcile_after_seconds)
    due: list[int] = []
    with sessions() as session:
        rows = session.execute(
            select(Delivery.id, Delivery.created_at, Delivery.attempts).where(
                Delivery.status.in_(OPEN_STATUSES)
            )
        ).all()
    open_ids = {row[0] for row in rows}
    for delivery_id in list(_reissued):
        if delivery_id not in open_ids:
            del _reissued[delivery_id]
    for delivery_id, created_at, attempts in rows:
        waited = sum(backoff_seconds(settings, n) for n in range(1, attempts + 1))
        last = _reissued.get(delivery_id)
        if created_at + timedelta(seconds=waited) + grace <= now and (
            last is None or last + grace <= now
        ):
            _reissued[delivery_id] = now
            due.append(delivery_id)
    return due


# When this process last re-sent each open delivery: one re-send per grace period, not per sweep.
_reissued: dict[int, datetime] = {}
