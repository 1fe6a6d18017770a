"""The routing function: which pool reads a study, with what priority, by when — by the rules.

"Exam below, reading above" (基层检查、上级诊断): the rules in force (:func:`active_rules`: the
newest rule set an administrator stored, else ``RDX_ROUTING_FILE``, else the packaged default,
which sends a township's study to the reading centre of its community's lead hospital) choose the
pool, section, priority and due time (:mod:`remote_dx.routing.rules`). Every decision is recorded
as a :class:`~remote_dx.core.models.RoutingDecision` row naming the rule, and the item's
``routing_rule`` names it too, as ``<rule>/<ecg|imaging>/<priority>(<priority source>)``.

All SLA clocks run from the study's receiving time (DESIGN, "Time").
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session

from remote_dx.core.clock import utcnow
from remote_dx.core.models import (
    Institution,
    Priority,
    RoutingRuleSet,
    Study,
    WorklistItem,
    WorklistStatus,
)
from remote_dx.core.models import RoutingDecision as DecisionRecord
from remote_dx.core.models import RoutingDecisionKind as DecisionKind
from remote_dx.core.settings import get_settings
from remote_dx.routing.rules import (
    DEFAULT_RULES,
    DEFAULT_SLA,
    ECG_MODALITIES,
    RuleSet,
    RuleSetError,
    StudyFacts,
    load_rules,
    study_kind,
)

log = logging.getLogger(__name__)

__all__ = [
    "ECG_MODALITIES",
    "SLA",
    "NoReadingPool",
    "RoutingDecision",
    "active_rules",
    "decide",
    "header_patient_age",
    "header_priority",
    "route_study",
    "study_kind",
]

SLA = DEFAULT_SLA  # the community's default table (kept under its old name)
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
    rule: str  # recorded form: "<rule name>/<kind>/<priority>(<priority source>)"
    rule_name: str = ""
    section: str | None = None
    second_signature: bool = False
    kind: str = "imaging"
    priority_source: str = "default"


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


def header_patient_age(datasets: Iterable[Dataset]) -> str | None:
    """The first Patient's Age (0010,1010) given, e.g. "045Y" (for rules when no birth date)."""
    for ds in datasets:
        value = str(ds.get("PatientAge") or "").strip()
        if value:
            return value
    return None


# --- the rules in force ---------------------------------------------------------------------------

_cache: dict[tuple[object, ...], RuleSet] = {}
_cache_lock = threading.Lock()


def _cached(key: tuple[object, ...], make: object) -> RuleSet:
    with _cache_lock:
        found = _cache.get(key)
    if found is None:
        found = make()  # type: ignore[operator]
        with _cache_lock:
            if len(_cache) > 16:  # old versions are never asked for again
                _cache.clear()
            _cache[key] = found
    return found


def institution_codes(session: Session) -> set[str]:
    return set(session.scalars(select(Institution.code)))


def active_rules(session: Session, routing_file: Path | None = None) -> RuleSet:
    """The rules in force: the newest active stored version, else the routing file (setting
    ``routing_file`` / ``RDX_ROUTING_FILE``), else the packaged default.

    Parsed rule sets are cached by version (file: by path, size and modification time). A file
    that became invalid is logged and the default rules route meanwhile, so studies keep moving;
    stored versions were validated when they were stored.
    """
    stored = session.execute(
        select(RoutingRuleSet.id, RoutingRuleSet.yaml_text)
        .where(RoutingRuleSet.active.is_(True))
        .order_by(RoutingRuleSet.id.desc())
        .limit(1)
    ).first()
    if stored is not None:
        version, text = stored

        def from_db() -> RuleSet:
            try:
                rules = load_rules(text, source=f"db:{version}")
            except RuleSetError:
                log.exception(
                    "stored routing rules version %s are invalid; using defaults", version
                )
                return DEFAULT_RULES
            rules.version = version
            return rules

        return _cached(("db", version), from_db)

    path = routing_file if routing_file is not None else get_settings().routing_file
    if path is None:
        return DEFAULT_RULES
    try:
        info = Path(path).stat()
    except OSError as exc:
        log.error("routing file %s cannot be read (%s); using the default rules", path, exc)
        return DEFAULT_RULES

    def from_file() -> RuleSet:
        try:
            text = Path(path).read_text(encoding="utf-8")
            return load_rules(text, known_codes=institution_codes(session), source=f"file:{path}")
        except (OSError, UnicodeDecodeError, RuleSetError) as exc:
            log.error("routing file %s is invalid (%s); using the default rules", path, exc)
            return DEFAULT_RULES

    return _cached(("file", str(path), info.st_size, info.st_mtime_ns), from_file)


def clear_rules_cache() -> None:
    with _cache_lock:
        _cache.clear()


# --- deciding -------------------------------------------------------------------------------------


def decide(
    origin: Institution,
    *,
    modalities: Iterable[str],
    received_at: datetime,
    priority: Priority | None = None,
    priority_source: str = "header",
    rules: RuleSet | None = None,
    facts: StudyFacts | None = None,
    session: Session | None = None,
    resolve: Callable[[str], Institution | None] | None = None,
) -> RoutingDecision:
    """Apply ``rules`` (default: the packaged default) to a study; the first match wins.

    ``priority_source`` names where a given priority came from in the recorded rule ("header",
    or "ecg-critical" when the preliminary ECG analysis found a critical value). ``facts`` adds
    what rules may match on beyond origin, modalities and priority (body part, description,
    age); ``resolve`` (default: a query in ``session``) finds pools named by institution code.
    When no rule matches, the origin's lead hospital reads it (rule ``default``).
    """
    rules = rules or DEFAULT_RULES
    mods = tuple(m for m in modalities if m)
    if facts is None:
        facts = StudyFacts(origin=origin, modalities=mods, received_at=received_at)
    facts = StudyFacts(
        origin=origin,
        modalities=mods,
        received_at=received_at,
        priority=priority,
        body_part=facts.body_part,
        description=facts.description,
        birth_date=facts.birth_date,
        study_date=facts.study_date,
        patient_age=facts.patient_age,
    )

    def by_code(code: str) -> Institution | None:
        if session is None:
            return None
        return session.scalar(select(Institution).where(Institution.code == code))

    chosen = rules.choose(
        facts, resolve=resolve or by_code, received_at=received_at, priority_source=priority_source
    )
    kind = study_kind(mods)
    if chosen is None:
        pool = origin.lead_hospital()
        if pool is None:
            raise NoReadingPool(
                f"{origin.name} ({origin.code}) has no county, city or province hospital above it"
            )
        level = priority or Priority.ROUTINE
        source = priority_source if priority is not None else "default"
        return RoutingDecision(
            pool=pool,
            priority=level,
            due_at=received_at + rules.sla_for(mods, level),
            rule=f"default/{kind}/{level.value}({source})",
            rule_name="default",
            kind=kind,
            priority_source=source,
        )
    return RoutingDecision(
        pool=chosen.pool,
        priority=chosen.priority,
        due_at=chosen.due_at,
        rule=f"{chosen.rule.name}/{kind}/{chosen.priority.value}({chosen.priority_source})"[:128],
        rule_name=chosen.rule.name,
        section=chosen.rule.section,
        second_signature=chosen.rule.second_signature,
        kind=kind,
        priority_source=chosen.priority_source,
    )


def route_study(
    session: Session,
    study: Study,
    *,
    modalities: Iterable[str],
    priority: Priority | None = None,
    now: datetime | None = None,
    priority_source: str = "header",
    patient_age: str | None = None,
    rules: RuleSet | None = None,
) -> WorklistItem:
    """Create or update the study's worklist item (idempotent: one item per study) and record
    the decision (a RoutingDecision row, only when something changed).

    An item a reader already claimed, drafted or signed, or that was escalated or sent to
    consultation, keeps its pool and priority: a late instance re-processes the study but must
    not pull it away from the reader.
    """
    now = now or utcnow()
    rules = rules or active_rules(session)
    mods = list(modalities)
    facts = StudyFacts(
        origin=study.origin,
        modalities=tuple(mods),
        received_at=study.received_at,
        body_part=study.body_part,
        description=study.description,
        birth_date=study.patient.birth_date if study.patient is not None else None,
        study_date=study.study_date,
        patient_age=patient_age,
    )
    decision = decide(
        study.origin,
        modalities=mods,
        received_at=study.received_at,
        priority=priority,
        priority_source=priority_source,
        rules=rules,
        facts=facts,
        session=session,
    )
    item = session.scalar(select(WorklistItem).where(WorklistItem.study_pk == study.id))
    kind = DecisionKind.INITIAL
    previous_pool: int | None = None
    if item is None:
        item = WorklistItem(
            study_pk=study.id,
            status=WorklistStatus.UNREAD,
            routed_at=now,
            escalation_level=0,
            version=0,
        )
        session.add(item)
    elif item.status != WorklistStatus.UNREAD or (item.escalation_level or 0) > 0:
        return item
    else:
        unchanged = (
            item.pool_id == decision.pool.id
            and item.priority == decision.priority
            and item.due_at == decision.due_at
            and item.routing_rule == decision.rule
            and item.section == decision.section
            and bool(item.second_signature_required) == decision.second_signature
        )
        if unchanged:
            return item
        previous_pool = item.pool_id
        if item.pool_id == decision.pool.id and item.priority != decision.priority:
            kind = DecisionKind.PRIORITY
        item.version = (item.version or 0) + 1
    item.pool_id = decision.pool.id
    item.priority = decision.priority
    item.due_at = decision.due_at
    item.routing_rule = decision.rule
    item.section = decision.section
    item.second_signature_required = decision.second_signature
    session.add(
        DecisionRecord(
            study_pk=study.id,
            kind=kind,
            rule=decision.rule,
            from_pool_id=previous_pool,
            pool_id=decision.pool.id,
            section=decision.section,
            priority=decision.priority,
            due_at=decision.due_at,
            decided_at=now,
            detail={
                "rule_name": decision.rule_name,
                "rules": rules.source,
                "rules_version": rules.version,
                "kind": decision.kind,
                "priority_source": decision.priority_source,
                "second_signature": decision.second_signature,
            },
        )
    )
    return item
