"""Issue 7: every escalation is audited — the overdue sweeper's automatic ones too (IHE ATNA: the
hub's sweeper is the actor, the study and its patient the participant objects), in the same
transaction as the move, and the hash chain stays whole."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from remote_dx.core import clock
from remote_dx.core.audit import verify_chain
from remote_dx.core.models import (
    AuditRecord,
    Institution,
    Patient,
    Priority,
    Study,
    StudyStatus,
    WorklistItem,
)
from remote_dx.routing import escalation
from remote_dx.routing.escalation import escalate_overdue
from remote_dx.routing.route import clear_rules_cache, route_study

XIPING = "XIPING"


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    clear_rules_cache()


def new_study(db: sessionmaker[Session], patient_id: str) -> str:
    """A processed STAT ECG from a township, routed to the county (due in 10 minutes)."""
    with db() as session, session.begin():
        source = session.scalar(select(Institution).where(Institution.code == XIPING))
        study = Study(
            study_uid=f"2.25.{uuid.uuid4().int}",
            patient=Patient(issuer=XIPING, patient_id=patient_id, name="王^芳"),
            origin=source,
            modalities="ECG",
            description="常规心电图",
            status=StudyStatus.PROCESSED,
            received_at=clock.utcnow(),
        )
        session.add(study)
        session.flush()
        route_study(session, study, modalities=["ECG"], priority=Priority.STAT)
        return study.study_uid


def escalate_records(db: sessionmaker[Session]) -> list[AuditRecord]:
    with db() as session:
        rows = session.scalars(
            select(AuditRecord).where(AuditRecord.action == "escalate").order_by(AuditRecord.seq)
        ).all()
        for row in rows:
            session.expunge(row)
        return list(rows)


def test_automatic_escalation_and_the_top_flag_are_audited(db: sessionmaker[Session]) -> None:
    uid = new_study(db, "P-ESC-1")
    clock.advance(timedelta(minutes=11))
    assert escalate_overdue(db) == [uid]

    (moved,) = escalate_records(db)
    assert moved.username == "system:overdue-sweeper"
    assert moved.role == "system"
    assert moved.outcome == 0
    assert (moved.object_type, moved.object_id) == ("study", uid)
    assert moved.patient == f"P-ESC-1^^^{XIPING}"
    assert moved.institution == "XXXRMYY"  # the pool it left
    assert moved.detail["rule"] == "auto-escalation/overdue"
    assert (moved.detail["from_pool"], moved.detail["to_pool"]) == ("XXXRMYY", "NYSZXYY")
    assert moved.detail["reason"] == "not claimed by its due time"

    # City → province, then flagged once at the top: one record each, none for a no-op sweep.
    clock.advance(timedelta(minutes=11))
    assert escalate_overdue(db) == [uid]
    clock.advance(timedelta(minutes=11))
    assert escalate_overdue(db) == []
    assert escalate_overdue(db) == []
    records = escalate_records(db)
    assert [(r.detail["rule"], r.detail["to_pool"]) for r in records] == [
        ("auto-escalation/overdue", "NYSZXYY"),
        ("auto-escalation/overdue", "HNSRMYY"),
        ("auto-escalation/at-top", "HNSRMYY"),
    ]
    with db() as session:
        assert verify_chain(session).ok


def test_no_escalation_without_its_audit_record(
    db: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    uid = new_study(db, "P-ESC-2")
    with db() as session:
        pool_before = session.scalar(
            select(WorklistItem.pool_id).join(Study).where(Study.study_uid == uid)
        )
    clock.advance(timedelta(minutes=11))

    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("audit trail unavailable")

    monkeypatch.setattr(escalation.audit_chain, "append_in", broken)
    with pytest.raises(RuntimeError):
        escalate_overdue(db)
    with db() as session:  # the move was rolled back with its record
        item = session.scalar(select(WorklistItem).join(Study).where(Study.study_uid == uid))
        assert (item.pool_id, item.escalation_level) == (pool_before, 0)
    monkeypatch.undo()
    assert escalate_overdue(db) == [uid]
    assert [r.object_id for r in escalate_records(db)] == [uid]
