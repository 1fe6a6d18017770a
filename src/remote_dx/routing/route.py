"""The routing function: a study goes to its origin's county lead hospital, with an SLA.

"Exam below, reading above" (基层检查、上级诊断): a township's study is read by the reading centre
of the lead hospital of its medical community (:meth:`Institution.lead_hospital`). A study taken
at the lead hospital itself (or above) stays in its own pool. The full rules engine (YAML rules,
provincial overflow, escalation) comes later; it will replace :func:`decide` and keep
:func:`route_study` and the recorded rule name.

All SLA clocks run from the study's receiving time (DESIGN, "Time").
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session

from remote_dx.core.clock import utcnow
from remote_dx.core.models import (
    Institution,
    Priority,
    Study,
    WorklistItem,
    WorklistStatus,
)

ECG_MODALITIES = frozenset({"ECG", "HD"})  # PS3.3 C.7.3.1.1.1 defined terms for waveforms

# Reading turnaround promised per (kind, priority). STAT and ROUTINE figures are the community's
# service levels (STAT ECG 10 min: chest-pain centre practice); URGENT sits between them.
SLA: dict[tuple[str, Priority], timedelta] = {
    ("ecg", Priority.STAT): timedelta(minutes=10),
    ("ecg", Priority.URGENT): timedelta(minutes=30),
    ("ecg", Priority.ROUTINE): timedelta(hours=2),
    ("imaging", Priority.STAT): timedelta(minutes=30),
    ("imaging", Priority.URGENT): timedelta(hours=4),
    ("imaging", Priority.ROUTINE): timedelta(hours=24),
}

# Requested Procedure Priority (0040,1003) and the retired Study Priority ID (0032,000C) use
# STAT / HIGH / ROUTINE / MEDIUM / LOW (PS3.3 C.4.11, C.4.13).
_HEADER_PRIORITY = {
    "STAT": Priority.STAT,
    "HIGH": Priority.URGENT,
    "URGENT": Priority.URGENT,
    "ROUTINE": Priority.ROUTINE,
    "MEDIUM": Priority.ROUTINE,
    "LOW": Priority.ROUTINE,
}
_RANK = {Priority.STAT: 0, Priority.URGENT: 1, Priority.ROUTINE: 2}


class NoReadingPool(Exception):
    """The origin institution belongs to no county, city or province: nobody can read it."""


@dataclass(frozen=True)
class RoutingDecision:
    pool: Institution
    priority: Priority
    due_at: datetime
    rule: str


def header_priority(datasets: Iterable[Dataset]) -> Priority | None:
    """The most urgent priority any instance's header asks for, or None if none says."""
    found: Priority | None = None
    for ds in datasets:
        values = [ds.get("RequestedProcedurePriority"), ds.get("StudyPriorityID")]
        for item in ds.get("RequestAttributesSequence") or []:
            values.append(item.get("RequestedProcedurePriority"))
        for value in values:
            priority = _HEADER_PRIORITY.get(str(value or "").strip().upper())
            if priority is not None and (found is None or _RANK[priority] < _RANK[found]):
                found = priority
    return found


def study_kind(modalities: Iterable[str]) -> str:
    """ "ecg" when the study holds waveforms, else "imaging"."""
    return "ecg" if any(m.upper() in ECG_MODALITIES for m in modalities if m) else "imaging"


def decide(
    origin: Institution,
    *,
    modalities: Iterable[str],
    received_at: datetime,
    priority: Priority | None = None,
    priority_source: str = "header",
) -> RoutingDecision:
    """The one routing rule: the origin's lead hospital, routine unless the header says more.

    ``priority_source`` names where a given priority came from in the recorded rule ("header",
    or "ecg-critical" when the preliminary ECG analysis found a critical value).
    """
    pool = origin.lead_hospital()
    if pool is None:
        raise NoReadingPool(
            f"{origin.name} ({origin.code}) has no county, city or province hospital above it"
        )
    kind = study_kind(modalities)
    chosen = priority or Priority.ROUTINE
    source = priority_source if priority is not None else "default"
    where = "own-pool" if pool.id == origin.id else "lead-hospital"
    return RoutingDecision(
        pool=pool,
        priority=chosen,
        due_at=received_at + SLA[(kind, chosen)],
        rule=f"{where}/{kind}/{chosen.value}({source})",
    )


def route_study(
    session: Session,
    study: Study,
    *,
    modalities: Iterable[str],
    priority: Priority | None = None,
    now: datetime | None = None,
    priority_source: str = "header",
) -> WorklistItem:
    """Create or update the study's worklist item (idempotent: one item per study).

    An item a reader already claimed, drafted or signed keeps its pool and priority: a late
    instance re-processes the study but must not pull it away from the reader.
    """
    decision = decide(
        study.origin,
        modalities=modalities,
        received_at=study.received_at,
        priority=priority,
        priority_source=priority_source,
    )
    item = session.scalar(select(WorklistItem).where(WorklistItem.study_pk == study.id))
    if item is None:
        item = WorklistItem(
            study_pk=study.id,
            status=WorklistStatus.UNREAD,
            routed_at=now or utcnow(),
        )
        session.add(item)
    elif item.status != WorklistStatus.UNREAD:
        return item
    item.pool_id = decision.pool.id
    item.priority = decision.priority
    item.due_at = decision.due_at
    item.routing_rule = decision.rule
    return item
