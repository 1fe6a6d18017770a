"""Study completion: when a study is "ready", and getting every ready study processed exactly once.

DICOM has no "study complete" message a township DR reliably sends (Storage Commitment, PS3.4
Annex J, confirms instances, not the end of a study; MPPS, PS3.4 Annex F, is rare on township
machines), so a study is taken as complete after a quiet period with no new instance.

The database, not the broker, is the source of truth for work:

- :func:`sweep_ready_studies` moves ``RECEIVING`` studies whose last instance is older than the
  quiet period to ``QUEUED`` with a compare-and-set UPDATE on (status, revision). Many sweepers in
  many processes may run at once; exactly one wins each study, and only the winner enqueues it.
- :func:`reconcile_stale_studies` finds ``QUEUED`` studies whose ``queued_at`` lease is older than
  ``reconcile_after`` — the broker lost the message, the enqueue failed, or a worker died in the
  middle — and hands them out again (another compare-and-set, on ``queued_at``). A study whose
  processing crashed or failed ``max_attempts`` times is marked ``FAILED`` with the last error, so
  a poison study cannot loop forever. Transient failures (storage or database down) never count
  towards giving up: a lost message or an outage only delays work.

Both functions return study UIDs for the caller to enqueue; they never talk to the broker, so
they are tested without one and the same code serves the embedded and the scale-out worker.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import case, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from remote_dx.core.clock import utcnow
from remote_dx.core.models import Study, StudyStatus, TaskRun

log = logging.getLogger(__name__)

PROCESS_STUDY = "process_study"

# TaskRun.status values. "retrying" marks a transient failure (storage/DB outage): it is not the
# study's fault, so it never counts towards FAILED.
RUN_RUNNING = "running"
RUN_RETRYING = "retrying"
RUN_SUCCEEDED = "succeeded"
RUN_FAILED = "failed"


def sweep_ready_studies(
    sessions: sessionmaker[Session],
    *,
    quiet_seconds: float,
    now: datetime | None = None,
    limit: int = 500,
) -> list[str]:
    """Move every study quiet for ``quiet_seconds`` from RECEIVING to QUEUED; return their UIDs.

    Each move is ``UPDATE … WHERE id = ? AND status = 'receiving' AND revision = ?`` so a study
    that received an instance between the SELECT and the UPDATE (revision bumped) or that another
    sweeper already took (status changed) is left alone. The caller must enqueue exactly the
    returned UIDs; if it dies before doing so, the reconciler re-enqueues them later.
    """
    now = now or utcnow()
    cutoff = now - timedelta(seconds=quiet_seconds)
    queued: list[str] = []
    with sessions() as session:
        candidates = session.execute(
            select(Study.id, Study.study_uid, Study.revision)
            .where(Study.status == StudyStatus.RECEIVING, Study.last_received_at <= cutoff)
            .order_by(Study.last_received_at)
            .limit(limit)
        ).all()
    for study_pk, study_uid, revision in candidates:
        with sessions() as session, session.begin():
            result = session.execute(
                update(Study)
                .where(
                    Study.id == study_pk,
                    Study.status == StudyStatus.RECEIVING,
                    Study.revision == revision,
                    Study.last_received_at <= cutoff,
                )
                .values(status=StudyStatus.QUEUED, queued_at=now)
                .execution_options(synchronize_session=False)
            )
        if result.rowcount == 1:  # type: ignore[attr-defined]
            queued.append(study_uid)
    if queued:
        log.info("queued %d ready studies", len(queued))
    return queued


def reconcile_stale_studies(
    sessions: sessionmaker[Session],
    *,
    reconcile_after_seconds: float,
    max_attempts: int,
    now: datetime | None = None,
    limit: int = 500,
) -> list[str]:
    """Re-issue QUEUED studies whose lease expired; fail the ones that exhausted their attempts.

    Returns the UIDs to enqueue again. ``queued_at`` is the lease: set by the sweep, renewed by
    the task when it starts and by this function when it re-issues, each time with a
    compare-and-set so concurrent reconcilers re-issue a study once.
    """
    now = now or utcnow()
    cutoff = now - timedelta(seconds=reconcile_after_seconds)
    reissued: list[str] = []
    with sessions() as session:
        stale = session.execute(
            select(
                Study.id,
                Study.study_uid,
                Study.queued_at,
                TaskRun.status,
                TaskRun.attempts,
                TaskRun.error,
            )
            .outerjoin(
                TaskRun, (TaskRun.study_pk == Study.id) & (TaskRun.task_name == PROCESS_STUDY)
            )
            .where(Study.status == StudyStatus.QUEUED, Study.queued_at <= cutoff)
            .order_by(Study.queued_at)
            .limit(limit)
        ).all()
    for study_pk, study_uid, queued_at, run_status, attempts, error in stale:
        give_up = (
            attempts is not None
            and attempts >= max_attempts
            and run_status in (RUN_RUNNING, RUN_FAILED)
        )
        with sessions() as session, session.begin():
            lease = (
                update(Study)
                .where(
                    Study.id == study_pk,
                    Study.status == StudyStatus.QUEUED,
                    Study.queued_at == queued_at,
                )
                .execution_options(synchronize_session=False)
            )
            if give_up:
                result = session.execute(lease.values(status=StudyStatus.FAILED))
                if result.rowcount == 1:  # type: ignore[attr-defined]
                    reason = (
                        "worker lost during the task"
                        if run_status == RUN_RUNNING
                        else (error or "unknown error")
                    )
                    session.execute(
                        update(TaskRun)
                        .where(TaskRun.study_pk == study_pk, TaskRun.task_name == PROCESS_STUDY)
                        .values(
                            status=RUN_FAILED,
                            finished_at=now,
                            error=f"gave up after {attempts} attempts: {reason}",
                        )
                    )
                    log.error("study %s FAILED after %d attempts: %s", study_uid, attempts, reason)
                continue
            result = session.execute(lease.values(queued_at=now))
        if result.rowcount == 1:  # type: ignore[attr-defined]
            log.warning(
                "re-enqueueing study %s: queued since %s, last run %s (%s attempts)",
                study_uid,
                queued_at,
                run_status or "never started",
                attempts or 0,
            )
            reissued.append(study_uid)
    return reissued


def requeue_study(
    sessions: sessionmaker[Session], study_uid: str, now: datetime | None = None
) -> bool:
    """Put a FAILED or PROCESSED study back in the queue (admin "reprocess"); True if it moved.

    The attempt counter starts again so a study failed by an outage that is now fixed gets its
    full number of tries.
    """
    now = now or utcnow()
    with sessions() as session, session.begin():
        study_pk = session.scalar(select(Study.id).where(Study.study_uid == study_uid))
        if study_pk is None:
            return False
        result = session.execute(
            update(Study)
            .where(
                Study.id == study_pk,
                Study.status.in_([StudyStatus.FAILED, StudyStatus.PROCESSED]),
            )
            .values(status=StudyStatus.QUEUED, queued_at=now)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            return False
        session.execute(
            update(TaskRun)
            .where(TaskRun.study_pk == study_pk, TaskRun.task_name == PROCESS_STUDY)
            .values(attempts=0)
        )
    return True


def start_run(
    sessions: sessionmaker[Session],
    study_uid: str,
    *,
    task_name: str = PROCESS_STUDY,
    now: datetime | None = None,
) -> int:
    """Record that a task started on the study; return the attempt number (1, 2, …).

    The study's ``queued_at`` lease is renewed at the same time, so the reconciler leaves a
    running task alone for ``reconcile_after_seconds`` before assuming its worker died.
    """
    now = now or utcnow()
    for _ in range(3):
        try:
            with sessions() as session, session.begin():
                study_pk = session.scalar(select(Study.id).where(Study.study_uid == study_uid))
                if study_pk is None:
                    raise LookupError(f"no study {study_uid}")
                run = session.scalar(
                    select(TaskRun).where(
                        TaskRun.study_pk == study_pk, TaskRun.task_name == task_name
                    )
                )
                if run is None:
                    run = TaskRun(
                        task_name=task_name, study_pk=study_pk, attempts=0, status=RUN_RUNNING
                    )
                    session.add(run)
                    session.flush()
                session.execute(
                    update(TaskRun)
                    .where(TaskRun.id == run.id)
                    .values(
                        # Attempts count since the last success: each new revision of a
                        # study gets the full number of tries.
                        attempts=case(
                            (TaskRun.status == RUN_SUCCEEDED, 1), else_=TaskRun.attempts + 1
                        ),
                        error=None,
                        status=RUN_RUNNING,
                        started_at=now,
                        finished_at=None,
                    )
                    .execution_options(synchronize_session=False)
                )
                session.execute(
                    update(Study)
                    .where(Study.id == study_pk, Study.status == StudyStatus.QUEUED)
                    .values(queued_at=now)
                    .execution_options(synchronize_session=False)
                )
                attempts = session.scalar(select(TaskRun.attempts).where(TaskRun.id == run.id))
            return int(attempts or 1)
        except IntegrityError:
            continue  # another delivery of the same task created the row first
    raise RuntimeError(f"could not record the start of {task_name} for {study_uid}")


def finish_run(
    sessions: sessionmaker[Session],
    study_uid: str,
    *,
    status: str,
    error: str | None = None,
    task_name: str = PROCESS_STUDY,
    now: datetime | None = None,
) -> int:
    """Record a task's outcome; return the number of attempts so far."""
    now = now or utcnow()
    with sessions() as session, session.begin():
        run = session.scalar(
            select(TaskRun)
            .join(Study, Study.id == TaskRun.study_pk)
            .where(Study.study_uid == study_uid, TaskRun.task_name == task_name)
        )
        if run is None:
            return 0
        run.status = status
        run.error = error[:4000] if error else None
        run.finished_at = now
        if status == RUN_RETRYING and run.attempts > 0:
            # An outage is not the study's fault: it does not use up an attempt.
            run.attempts -= 1
        return run.attempts


def fail_study(
    sessions: sessionmaker[Session], study_uid: str, *, revision: int | None = None
) -> bool:
    """Mark a QUEUED study FAILED (it exhausted its attempts); True if it moved."""
    with sessions() as session, session.begin():
        conditions = [Study.study_uid == study_uid, Study.status == StudyStatus.QUEUED]
        if revision is not None:
            conditions.append(Study.revision == revision)
        result = session.execute(
            update(Study)
            .where(*conditions)
            .values(status=StudyStatus.FAILED)
            .execution_options(synchronize_session=False)
        )
    return result.rowcount == 1  # type: ignore[attr-defined]
