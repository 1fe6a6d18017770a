"""The routing rule language: an ordered list of YAML rules, first match wins.

A rule set is YAML text (``RDX_ROUTING_FILE``, or a version an administrator stored through the
API) with these top-level keys (all optional; docs/routing.md has the full reference):

- ``sla``: due times per modality class (``ecg``/``imaging``) or modality code (``CT``) ×
  priority (``stat``/``urgent``/``routine``), e.g. ``{ecg: {stat: 10m}}``; missing entries keep
  the community defaults (:data:`DEFAULT_SLA`).
- ``consultation``: ``{target: province | parent | <code>, sla: <duration or per priority>}`` for
  会诊 requests; ``escalation``: ``{sla: …}`` for automatic overdue escalation.
- ``calendars``: on-call calendars, ``name → {date or date..date (Asia/Shanghai): pool code}``.
- ``rules``: the ordered rules; each has ``name``, ``match`` (all given criteria must hold; a
  list means "any of"), ``target`` (``pool``: a code, ``lead_hospital``, ``parent`` or
  ``on_call``; optional ``section``), and optional ``priority``, ``sla``, ``second_signature``.

Loading validates everything and reports *every* problem with its line and rule name
(:class:`RuleSetError`), so an administrator fixes a file in one round. A study no rule matches
goes to its lead hospital (rule ``default``), which is also all the packaged default does.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import Any

import yaml

from remote_dx.core.clock import to_shanghai
from remote_dx.core.models import Institution, InstitutionLevel, Priority

ECG_MODALITIES = frozenset({"ECG", "HD"})  # PS3.3 C.7.3.1.1.1 defined terms for waveforms
KINDS = ("ecg", "imaging")
LEVELS = frozenset(level.value for level in InstitutionLevel)
RANK = {Priority.STAT: 0, Priority.URGENT: 1, Priority.ROUTINE: 2}
WEEKDAYS = {"mon": 0, "tue": 1, "wed": 2, "thu": 3, "fri": 4, "sat": 5, "sun": 6}
# Pools a rule can name by role rather than by code.
POOL_KEYWORDS = frozenset({"lead_hospital", "parent", "on_call"})
CONSULT_KEYWORDS = frozenset({"province", "parent"})

# Reading turnaround promised per (class, priority). STAT and ROUTINE figures are the community's
# service levels (STAT ECG 10 min: chest-pain centre practice); URGENT sits between them.
DEFAULT_SLA: dict[tuple[str, Priority], timedelta] = {
    ("ecg", Priority.STAT): timedelta(minutes=10),
    ("ecg", Priority.URGENT): timedelta(minutes=30),
    ("ecg", Priority.ROUTINE): timedelta(hours=2),
    ("imaging", Priority.STAT): timedelta(minutes=30),
    ("imaging", Priority.URGENT): timedelta(hours=4),
    ("imaging", Priority.ROUTINE): timedelta(hours=24),
}
# A consultation answers a reader who is waiting: shorter than a routine first read.
DEFAULT_CONSULTATION_SLA: dict[Priority, timedelta] = {
    Priority.STAT: timedelta(minutes=30),
    Priority.URGENT: timedelta(hours=2),
    Priority.ROUTINE: timedelta(hours=8),
}

# The packaged default: today's behaviour ("exam below, reading above") as rules.
DEFAULT_RULES_YAML = """\
# Packaged default routing: a study goes to its own medical community's lead hospital.
rules:
  - name: own-pool           # taken at a county (or higher) hospital: read in its own pool
    match:
      origin: [county, city, province]
    target:
      pool: lead_hospital
  - name: lead-hospital      # a township's (or village's) study: its county lead hospital
    target:
      pool: lead_hospital
"""

_DURATION = re.compile(
    r"^\s*(?:(\d+)\s*d)?\s*(?:(\d+)\s*h)?\s*(?:(\d+)\s*m(?:in)?)?\s*(?:(\d+)\s*s)?\s*$"
)
_WINDOW = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")
_AGE = re.compile(r"^(\d{3})([DWMY])$")  # DICOM AS value representation (PS3.5 §6.2)


# --- errors ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RuleProblem:
    """One thing wrong in a rule set, located by line (1-based) and rule name when known."""

    message: str
    line: int | None = None
    rule: str | None = None
    path: str | None = None

    def __str__(self) -> str:
        where = []
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.rule is not None:
            where.append(f"rule {self.rule!r}")
        prefix = ", ".join(where)
        path = f"{self.path}: " if self.path else ""
        return f"{prefix}: {path}{self.message}" if prefix else f"{path}{self.message}"

    def as_dict(self) -> dict[str, Any]:
        return {"line": self.line, "rule": self.rule, "path": self.path, "message": self.message}


class RuleSetError(ValueError):
    """The rule set is invalid; ``problems`` lists every problem found."""

    def __init__(self, problems: list[RuleProblem]) -> None:
        self.problems = problems
        super().__init__(
            f"{len(problems)} problem(s) in the routing rules: "
            + "; ".join(str(p) for p in problems)
        )


# --- YAML with line numbers -----------------------------------------------------------------------


class _Map(dict):  # type: ignore[type-arg]
    line: int = 0
    key_lines: dict[Any, int]


class _Seq(list):  # type: ignore[type-arg]
    line: int = 0
    item_lines: list[int]


class _Loader(yaml.SafeLoader):
    """SafeLoader that remembers where each mapping, key and list item started."""


def _construct_map(loader: _Loader, node: yaml.MappingNode) -> _Map:
    loader.flatten_mapping(node)
    result = _Map()
    result.line = node.start_mark.line + 1
    result.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, list | dict):
            raise yaml.constructor.ConstructorError(
                None, None, "a key must be a plain value", key_node.start_mark
            )
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = key_node.start_mark.line + 1
    return result


def _construct_seq(loader: _Loader, node: yaml.SequenceNode) -> _Seq:
    result = _Seq(loader.construct_object(child, deep=True) for child in node.value)
    result.line = node.start_mark.line + 1
    result.item_lines = [child.start_mark.line + 1 for child in node.value]
    return result


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_map)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_seq)
# Dates stay text: they are checked (with their line) by the calendar parser, not by YAML.
_Loader.add_constructor(
    "tag:yaml.org,2002:timestamp", lambda loader, node: loader.construct_scalar(node)
)


def _line(value: Any, default: int | None = None) -> int | None:
    return getattr(value, "line", None) or default


def _key_line(mapping: Any, key: str, default: int | None = None) -> int | None:
    lines = getattr(mapping, "key_lines", None) or {}
    return lines.get(key, default)


# --- study facts ----------------------------------------------------------------------------------


def study_kind(modalities: Iterable[str]) -> str:
    """ "ecg" when the study holds waveforms, else "imaging"."""
    return "ecg" if any(m.upper() in ECG_MODALITIES for m in modalities if m) else "imaging"


def _dicom_date(value: str | None) -> date | None:
    text = (value or "").strip()
    if len(text) < 8 or not text[:8].isdigit():
        return None
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:8]))
    except ValueError:
        return None


@dataclass(frozen=True)
class StudyFacts:
    """What rules can match on, taken from the study index (and the headers, for PatientAge)."""

    origin: Institution
    modalities: tuple[str, ...] = ()
    received_at: datetime | None = None
    priority: Priority | None = None
    body_part: str | None = None
    description: str | None = None
    birth_date: str | None = None  # PatientBirthDate (0010,0030), DA
    study_date: str | None = None  # StudyDate (0008,0020), DA
    patient_age: str | None = None  # PatientAge (0010,1010), AS, e.g. "045Y"

    @property
    def kind(self) -> str:
        return study_kind(self.modalities)

    def age_years(self) -> float | None:
        """Age at the exam: from birth and study dates when both are known, else PatientAge."""
        born = _dicom_date(self.birth_date)
        taken = _dicom_date(self.study_date)
        if taken is None and self.received_at is not None:
            taken = to_shanghai(self.received_at).date()
        if born is not None and taken is not None and born <= taken:
            years = taken.year - born.year - ((taken.month, taken.day) < (born.month, born.day))
            return float(years)
        found = _AGE.match((self.patient_age or "").strip().upper())
        if found is None:
            return None
        number, unit = int(found.group(1)), found.group(2)
        return {"D": number / 365.25, "W": number * 7 / 365.25, "M": number / 12, "Y": number}[unit]


# --- compiled rules -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Match:
    """All given criteria must hold; within one criterion any listed value will do."""

    origin_codes: frozenset[str] = frozenset()
    origin_levels: frozenset[str] = frozenset()
    communities: frozenset[str] = frozenset()
    modalities: frozenset[str] = frozenset()
    body_parts: frozenset[str] = frozenset()
    contains: tuple[str, ...] = ()
    regex: re.Pattern[str] | None = None
    priorities: frozenset[Priority] = frozenset()
    age_min: float | None = None
    age_max: float | None = None
    windows: tuple[tuple[int, int], ...] = ()  # minutes after midnight, Asia/Shanghai
    weekdays: frozenset[int] = frozenset()
    on_call: str | None = None

    def matches(self, facts: StudyFacts, calendars: Mapping[str, Calendar]) -> bool:
        origin = facts.origin
        if (self.origin_codes or self.origin_levels) and not (
            origin.code in self.origin_codes or str(origin.level) in self.origin_levels
        ):
            return False
        if self.communities:
            lead = origin.lead_hospital()
            if lead is None or lead.code not in self.communities:
                return False
        if self.modalities and not any(m.upper() in self.modalities for m in facts.modalities):
            return False
        if self.body_parts and (facts.body_part or "").strip().upper() not in self.body_parts:
            return False
        text = facts.description or ""
        if self.contains and not any(word in text for word in self.contains):
            return False
        if self.regex is not None and self.regex.search(text) is None:
            return False
        if self.priorities and (facts.priority or Priority.ROUTINE) not in self.priorities:
            return False
        if self.age_min is not None or self.age_max is not None:
            age = facts.age_years()
            if age is None:
                return False
            if self.age_min is not None and age < self.age_min:
                return False
            if self.age_max is not None and age >= self.age_max:
                return False
        if self.windows or self.weekdays or self.on_call:
            if facts.received_at is None:
                return False
            local = to_shanghai(facts.received_at)
            if self.weekdays and local.weekday() not in self.weekdays:
                return False
            if self.windows:
                minute = local.hour * 60 + local.minute
                if not any(_in_window(minute, w) for w in self.windows):
                    return False
            if self.on_call and calendars[self.on_call].pool_on(local.date()) is None:
                return False
        return True


def _in_window(minute: int, window: tuple[int, int]) -> bool:
    start, end = window
    if start <= end:
        return start <= minute < end
    return minute >= start or minute < end  # wraps past midnight, e.g. 22:00-08:00


@dataclass(frozen=True)
class Calendar:
    """On-call calendar: which pool reads on which date (Asia/Shanghai)."""

    name: str
    days: Mapping[date, str]

    def pool_on(self, day: date) -> str | None:
        return self.days.get(day)


@dataclass(frozen=True)
class Rule:
    name: str
    line: int | None
    match: Match
    pool: str  # an institution code or one of POOL_KEYWORDS
    section: str | None = None
    set_priority: Priority | None = None
    raise_priority: Priority | None = None
    sla: Mapping[Priority, timedelta] | timedelta | None = None
    second_signature: bool = False
    on_call: str | None = None  # the calendar a ``pool: on_call`` target reads


@dataclass(frozen=True)
class Target:
    """What the first matching rule chose."""

    rule: Rule
    pool: Institution
    priority: Priority
    priority_source: str
    due_at: datetime
    kind: str


@dataclass
class RuleSet:
    rules: list[Rule]
    sla: dict[tuple[str, Priority], timedelta] = field(default_factory=lambda: dict(DEFAULT_SLA))
    consultation_target: str = "province"
    consultation_sla: dict[Priority, timedelta] = field(
        default_factory=lambda: dict(DEFAULT_CONSULTATION_SLA)
    )
    escalation_sla: dict[Priority, timedelta] | None = None
    calendars: dict[str, Calendar] = field(default_factory=dict)
    source: str = "default"  # "default", "file:<path>" or "db:<version>"
    version: int | None = None
    yaml_text: str = DEFAULT_RULES_YAML

    def sla_for(self, modalities: Iterable[str], priority: Priority) -> timedelta:
        """Due-time allowance: a modality's own entry beats its class's."""
        mods = [m.upper() for m in modalities if m]
        found = [self.sla[(m, priority)] for m in mods if (m, priority) in self.sla]
        if found:
            return min(found)
        return self.sla[(study_kind(mods), priority)]

    def escalation_sla_for(self, modalities: Iterable[str], priority: Priority) -> timedelta:
        if self.escalation_sla is not None and priority in self.escalation_sla:
            return self.escalation_sla[priority]
        return self.sla_for(modalities, priority)

    def choose(
        self,
        facts: StudyFacts,
        *,
        resolve: Callable[[str], Institution | None],
        received_at: datetime,
        priority_source: str = "header",
    ) -> Target | None:
        """The first rule that matches *and* whose pool exists; None if no rule does."""
        for rule in self.rules:
            if not rule.match.matches(facts, self.calendars):
                continue
            pool = self._pool(rule, facts, resolve)
            if pool is None:  # e.g. "parent" at the top of the tree: try the next rule
                continue
            priority, source = _priority(rule, facts.priority, priority_source)
            if isinstance(rule.sla, timedelta):
                allowance = rule.sla
            elif rule.sla is not None and priority in rule.sla:
                allowance = rule.sla[priority]
            else:
                allowance = self.sla_for(facts.modalities, priority)
            return Target(rule, pool, priority, source, received_at + allowance, facts.kind)
        return None

    def _pool(
        self, rule: Rule, facts: StudyFacts, resolve: Callable[[str], Institution | None]
    ) -> Institution | None:
        lead = facts.origin.lead_hospital()
        if rule.pool == "lead_hospital":
            return lead
        if rule.pool == "parent":
            return lead.parent if lead is not None else None
        if rule.pool == "on_call":
            assert rule.on_call is not None and facts.received_at is not None
            code = self.calendars[rule.on_call].pool_on(to_shanghai(facts.received_at).date())
            return resolve(code) if code else None
        return resolve(rule.pool)


def _priority(rule: Rule, given: Priority | None, source: str) -> tuple[Priority, str]:
    current = given or Priority.ROUTINE
    current_source = source if given is not None else "default"
    # A critical ECG finding is never made less urgent by a rule.
    lowers_critical = (
        rule.set_priority is not None
        and source == "ecg-critical"
        and RANK[rule.set_priority] > RANK[current]
    )
    if rule.set_priority is not None and rule.set_priority != current and not lowers_critical:
        return rule.set_priority, "rule"
    if rule.raise_priority is not None and RANK[rule.raise_priority] < RANK[current]:
        return rule.raise_priority, "rule"
    return current, current_source


# --- parsing and validation -----------------------------------------------------------------------

_TOP_KEYS = {"rules", "sla", "consultation", "escalation", "calendars"}
_RULE_KEYS = {"name", "match", "target", "priority", "sla", "second_signature", "description"}
_MATCH_KEYS = {
    "origin",
    "community",
    "modality",
    "body_part",
    "description",
    "priority",
    "age",
    "time_of_day",
    "weekday",
    "on_call",
}
_TARGET_KEYS = {"pool", "section", "calendar"}


def parse_duration(value: Any) -> timedelta | None:
    """``"10m"``, ``"2h"``, ``"1h30m"``, ``"1d"``, ``"90s"`` → timedelta; None if not one."""
    if not isinstance(value, str):
        return None
    found = _DURATION.match(value)
    if found is None or not any(found.groups()):
        return None
    d, h, m, s = (int(g) if g else 0 for g in found.groups())
    delta = timedelta(days=d, hours=h, minutes=m, seconds=s)
    return delta if delta > timedelta(0) else None


class _Checker:
    """Collects problems while compiling, so one load reports all of them."""

    def __init__(self, known_codes: set[str] | None) -> None:
        self.known_codes = known_codes
        self.problems: list[RuleProblem] = []

    def problem(
        self, message: str, line: int | None, rule: str | None = None, path: str | None = None
    ) -> None:
        self.problems.append(RuleProblem(message, line, rule, path))

    def code(self, value: Any, line: int | None, rule: str | None, path: str) -> str | None:
        if not isinstance(value, str) or not value.strip():
            self.problem(f"expected an institution code, got {value!r}", line, rule, path)
            return None
        if self.known_codes is not None and value not in self.known_codes:
            self.problem(f"unknown institution code {value!r}", line, rule, path)
            return None
        return value

    def strings(self, value: Any, line: int | None, rule: str | None, path: str) -> list[str]:
        items = value if isinstance(value, list) else [value]
        out: list[str] = []
        for item in items:
            if isinstance(item, bool) or not isinstance(item, str | int) or str(item) == "":
                self.problem(f"expected text or a list of text, got {item!r}", line, rule, path)
            else:
                out.append(str(item))
        return out

    def priority(
        self, value: Any, line: int | None, rule: str | None, path: str
    ) -> Priority | None:
        try:
            return Priority(str(value).lower())
        except ValueError:
            self.problem(
                f"unknown priority {value!r} (use stat, urgent or routine)", line, rule, path
            )
            return None

    def duration(
        self, value: Any, line: int | None, rule: str | None, path: str
    ) -> timedelta | None:
        delta = parse_duration(value)
        if delta is None:
            self.problem(f"{value!r} is not a duration (e.g. 10m, 2h, 1h30m, 1d)", line, rule, path)
        return delta

    def per_priority(
        self, value: Any, line: int | None, rule: str | None, path: str
    ) -> dict[Priority, timedelta] | timedelta | None:
        """A single duration, or ``{stat: 10m, urgent: …, routine: …}``."""
        if isinstance(value, dict):
            out: dict[Priority, timedelta] = {}
            for key, item in value.items():
                where = _key_line(value, key, line)
                priority = self.priority(key, where, rule, path)
                delta = self.duration(item, where, rule, f"{path}.{key}")
                if priority is not None and delta is not None:
                    out[priority] = delta
            return out
        return self.duration(value, line, rule, path)

    def unknown_keys(
        self, mapping: dict[str, Any], allowed: set[str], rule: str | None, path: str
    ) -> None:
        for key in mapping:
            if key not in allowed:
                self.problem(
                    f"unknown key {key!r} (allowed: {', '.join(sorted(allowed))})",
                    _key_line(mapping, key, _line(mapping)),
                    rule,
                    path,
                )


def load_rules(
    text: str, *, known_codes: Iterable[str] | None = None, source: str = "text"
) -> RuleSet:
    """Parse and validate a rule set; raises :class:`RuleSetError` listing every problem.

    ``known_codes`` (the institutions in the database) lets unknown pool codes be reported now
    rather than at routing time; without it codes are not checked.
    """
    check = _Checker(set(known_codes) if known_codes is not None else None)
    try:
        data = yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        reason = getattr(exc, "problem", None) or str(exc)
        raise RuleSetError([RuleProblem(f"not valid YAML: {reason}", line)]) from exc
    if data is None:
        data = _Map()
    if not isinstance(data, dict):
        raise RuleSetError([RuleProblem("expected a mapping with a 'rules' list at top level", 1)])
    check.unknown_keys(data, _TOP_KEYS, None, "")

    ruleset = RuleSet(rules=[], source=source, yaml_text=text)
    _global_sla(check, data.get("sla"), _key_line(data, "sla"), ruleset)
    ruleset.calendars = _calendars(check, data.get("calendars"), _key_line(data, "calendars"))
    _consultation(check, data.get("consultation"), _key_line(data, "consultation"), ruleset)
    escalation = data.get("escalation")
    if escalation is not None:
        line = _key_line(data, "escalation")
        if not isinstance(escalation, dict):
            check.problem("expected a mapping with 'sla'", line, path="escalation")
        else:
            check.unknown_keys(escalation, {"sla"}, None, "escalation")
            if "sla" in escalation:
                sla = check.per_priority(
                    escalation["sla"], _key_line(escalation, "sla", line), None, "escalation.sla"
                )
                if isinstance(sla, timedelta):
                    sla = dict.fromkeys(Priority, sla)
                ruleset.escalation_sla = sla

    rules = data.get("rules", [])
    rules_line = _key_line(data, "rules", 1)
    if not isinstance(rules, list):
        check.problem("'rules' must be a list of rules", rules_line, path="rules")
        rules = []
    names: set[str] = set()
    item_lines = getattr(rules, "item_lines", [])
    for index, entry in enumerate(rules):
        line = item_lines[index] if index < len(item_lines) else rules_line
        rule = _rule(check, entry, line, index, ruleset.calendars)
        if rule is None:
            continue
        if rule.name in names:
            check.problem("duplicate rule name", rule.line, rule.name)
        names.add(rule.name)
        ruleset.rules.append(rule)
    if check.problems:
        raise RuleSetError(check.problems)
    return ruleset


def _global_sla(check: _Checker, value: Any, line: int | None, ruleset: RuleSet) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        check.problem(
            "expected a mapping of ecg/imaging/<modality> → priorities", line, None, "sla"
        )
        return
    for key, table in value.items():
        where = _key_line(value, key, line)
        name = str(key)
        cls = name.lower() if name.lower() in KINDS else name.upper()
        if cls not in KINDS and not re.fullmatch(r"[A-Z0-9]{1,16}", cls):
            check.problem(
                f"{key!r} is neither ecg, imaging nor a modality code", where, None, "sla"
            )
            continue
        if not isinstance(table, dict):
            check.problem("expected {stat: …, urgent: …, routine: …}", where, None, f"sla.{key}")
            continue
        parsed = check.per_priority(table, where, None, f"sla.{key}")
        if isinstance(parsed, dict):
            for priority, delta in parsed.items():
                ruleset.sla[(cls, priority)] = delta


def _calendars(check: _Checker, value: Any, line: int | None) -> dict[str, Calendar]:
    out: dict[str, Calendar] = {}
    if value is None:
        return out
    if not isinstance(value, dict):
        check.problem("expected a mapping of calendar name → {date: pool}", line, path="calendars")
        return out
    for name, days in value.items():
        where = _key_line(value, name, line)
        path = f"calendars.{name}"
        if not isinstance(days, dict):
            check.problem("expected a mapping of date (YYYY-MM-DD) → pool code", where, path=path)
            continue
        table: dict[date, str] = {}
        for key, code in days.items():
            key_line = _key_line(days, key, where)
            span = _date_span(key)
            if span is None:
                check.problem(
                    f"{key!r} is not a date (YYYY-MM-DD) or a range (YYYY-MM-DD..YYYY-MM-DD)",
                    key_line,
                    path=path,
                )
                continue
            pool = check.code(code, key_line, None, f"{path}.{key}")
            if pool is None:
                continue
            first, last = span
            day = first
            while day <= last:
                table[day] = pool
                day += timedelta(days=1)
        out[str(name)] = Calendar(str(name), table)
    return out


def _date_span(key: Any) -> tuple[date, date] | None:
    if isinstance(key, date) and not isinstance(key, datetime):
        return key, key
    parts = str(key).split("..")
    try:
        days = [date.fromisoformat(p.strip()) for p in parts]
    except ValueError:
        return None
    if len(days) == 1:
        return days[0], days[0]
    if len(days) == 2 and days[0] <= days[1]:
        return days[0], days[1]
    return None


def _consultation(check: _Checker, value: Any, line: int | None, ruleset: RuleSet) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        check.problem("expected a mapping with 'target' and/or 'sla'", line, path="consultation")
        return
    check.unknown_keys(value, {"target", "sla"}, None, "consultation")
    if "target" in value:
        target = value["target"]
        where = _key_line(value, "target", line)
        if (
            target in CONSULT_KEYWORDS
            or check.code(target, where, None, "consultation.target") is not None
        ):
            ruleset.consultation_target = str(target)
    if "sla" in value:
        sla = check.per_priority(
            value["sla"], _key_line(value, "sla", line), None, "consultation.sla"
        )
        if isinstance(sla, timedelta):
            ruleset.consultation_sla = dict.fromkeys(Priority, sla)
        elif sla:
            ruleset.consultation_sla.update(sla)


def _rule(
    check: _Checker, entry: Any, line: int | None, index: int, calendars: dict[str, Calendar]
) -> Rule | None:
    if not isinstance(entry, dict):
        check.problem(f"rule #{index + 1} must be a mapping with name, match and target", line)
        return None
    line = _line(entry, line)
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        check.problem(f"rule #{index + 1} needs a 'name' (text)", line)
        name = f"#{index + 1}"
    elif len(name) > 64:
        check.problem("a rule name has at most 64 characters", line, name)
    check.unknown_keys(entry, _RULE_KEYS, name, "")

    match = _match(check, entry.get("match"), _key_line(entry, "match", line), name, calendars)

    target = entry.get("target")
    target_line = _key_line(entry, "target", line)
    pool, section, on_call = "lead_hospital", None, None
    if target is None:
        check.problem("missing 'target' (e.g. target: {pool: lead_hospital})", line, name)
    elif isinstance(target, str):
        pool = target  # shorthand: target: HNSRMYY
    elif not isinstance(target, dict):
        check.problem("expected a mapping with 'pool'", target_line, name, "target")
    else:
        check.unknown_keys(target, _TARGET_KEYS, name, "target")
        pool = target.get("pool", "")
        section = target.get("section")
        on_call = target.get("calendar")
        if section is not None and (not isinstance(section, str) or not 0 < len(section) <= 64):
            check.problem(
                f"section must be a name of 1-64 characters, got {section!r}",
                _key_line(target, "section", target_line),
                name,
                "target.section",
            )
            section = None
    if isinstance(target, str | dict):
        pool_line = (
            _key_line(target, "pool", target_line) if isinstance(target, dict) else (target_line)
        )
        if pool not in POOL_KEYWORDS:
            check.code(pool, pool_line, name, "target.pool")
        if pool == "on_call":
            on_call = on_call or match.on_call
            if on_call is None:
                check.problem(
                    "pool: on_call needs a calendar (target.calendar or match.on_call)",
                    pool_line,
                    name,
                    "target.pool",
                )
            elif on_call not in calendars:
                check.problem(f"unknown calendar {on_call!r}", pool_line, name, "target.calendar")
            elif not match.on_call:
                # Only route by the calendar on the dates it covers.
                match = _replace_on_call(match, on_call)

    set_priority = raise_priority = None
    if "priority" in entry:
        value = entry["priority"]
        where = _key_line(entry, "priority", line)
        if isinstance(value, dict):
            check.unknown_keys(value, {"raise_to"}, name, "priority")
            if "raise_to" in value:
                raise_priority = check.priority(value["raise_to"], where, name, "priority.raise_to")
        else:
            set_priority = check.priority(value, where, name, "priority")

    sla = None
    if "sla" in entry:
        sla = check.per_priority(entry["sla"], _key_line(entry, "sla", line), name, "sla")

    second = entry.get("second_signature", False)
    if not isinstance(second, bool):
        check.problem(
            f"second_signature must be true or false, got {second!r}",
            _key_line(entry, "second_signature", line),
            name,
            "second_signature",
        )
        second = False
    return Rule(
        name=name,
        line=line,
        match=match,
        pool=str(pool),
        section=section,
        set_priority=set_priority,
        raise_priority=raise_priority,
        sla=sla,
        second_signature=second,
        on_call=on_call,
    )


def _replace_on_call(match: Match, calendar: str) -> Match:
    return replace(match, on_call=calendar)


def _match(
    check: _Checker, value: Any, line: int | None, rule: str, calendars: dict[str, Calendar]
) -> Match:
    if value is None:
        return Match()  # no criteria: matches every study (a catch-all)
    if not isinstance(value, dict):
        check.problem("'match' must be a mapping of criteria", line, rule, "match")
        return Match()
    check.unknown_keys(value, _MATCH_KEYS, rule, "match")

    def at(key: str) -> int | None:
        return _key_line(value, key, line)

    fields: dict[str, Any] = {}
    if "origin" in value:
        codes, levels = set(), set()
        for item in check.strings(value["origin"], at("origin"), rule, "match.origin"):
            if item.lower() in LEVELS:
                levels.add(item.lower())
            elif check.code(item, at("origin"), rule, "match.origin") is not None:
                codes.add(item)
        fields["origin_codes"], fields["origin_levels"] = frozenset(codes), frozenset(levels)
    if "community" in value:
        codes = {
            c
            for c in check.strings(value["community"], at("community"), rule, "match.community")
            if check.code(c, at("community"), rule, "match.community") is not None
        }
        fields["communities"] = frozenset(codes)
    if "modality" in value:
        fields["modalities"] = frozenset(
            m.upper()
            for m in check.strings(value["modality"], at("modality"), rule, "match.modality")
        )
    if "body_part" in value:
        fields["body_parts"] = frozenset(
            b.upper()
            for b in check.strings(value["body_part"], at("body_part"), rule, "match.body_part")
        )
    if "description" in value:
        desc = value["description"]
        where = at("description")
        if isinstance(desc, str | list):
            desc = {"contains": desc}
        if not isinstance(desc, dict):
            check.problem(
                "expected text, a list, or {contains: …, regex: …}",
                where,
                rule,
                "match.description",
            )
        else:
            check.unknown_keys(desc, {"contains", "regex"}, rule, "match.description")
            if "contains" in desc:
                fields["contains"] = tuple(
                    check.strings(desc["contains"], where, rule, "match.description.contains")
                )
            if "regex" in desc:
                pattern = desc["regex"]
                try:
                    if not isinstance(pattern, str):
                        raise re.error(f"expected text, got {pattern!r}")
                    fields["regex"] = re.compile(pattern)
                except re.error as exc:
                    check.problem(
                        f"bad regular expression {pattern!r}: {exc}",
                        _key_line(desc, "regex", where),
                        rule,
                        "match.description.regex",
                    )
    if "priority" in value:
        items = value["priority"] if isinstance(value["priority"], list) else [value["priority"]]
        found = {check.priority(p, at("priority"), rule, "match.priority") for p in items}
        fields["priorities"] = frozenset(p for p in found if p is not None)
    if "age" in value:
        _age(check, value["age"], at("age"), rule, fields)
    if "time_of_day" in value:
        windows = []
        raw = value["time_of_day"]
        for item in raw if isinstance(raw, list) else [raw]:
            window = _window(item)
            if window is None:
                check.problem(
                    f"{item!r} is not a time window HH:MM-HH:MM (00:00-23:59, Asia/Shanghai; "
                    "may wrap past midnight, e.g. 22:00-08:00)",
                    at("time_of_day"),
                    rule,
                    "match.time_of_day",
                )
            else:
                windows.append(window)
        fields["windows"] = tuple(windows)
    if "weekday" in value:
        days = set()
        for item in check.strings(value["weekday"], at("weekday"), rule, "match.weekday"):
            day = WEEKDAYS.get(item.strip().lower()[:3])
            if day is None:
                check.problem(
                    f"unknown weekday {item!r} (use mon, tue, wed, thu, fri, sat, sun)",
                    at("weekday"),
                    rule,
                    "match.weekday",
                )
            else:
                days.add(day)
        fields["weekdays"] = frozenset(days)
    if "on_call" in value:
        name = value["on_call"]
        if name not in calendars:
            check.problem(
                f"unknown calendar {name!r} (define it under 'calendars')",
                at("on_call"),
                rule,
                "match.on_call",
            )
        else:
            fields["on_call"] = name
    return Match(**fields)


def _age(check: _Checker, value: Any, line: int | None, rule: str, fields: dict[str, Any]) -> None:
    if not isinstance(value, dict) or not value or set(value) - {"min", "max"}:
        check.problem(
            f"age must be {{min: years, max: years}} (min ≤ age < max), got {value!r}",
            line,
            rule,
            "match.age",
        )
        return
    for key in ("min", "max"):
        if key in value:
            number = value[key]
            if isinstance(number, bool) or not isinstance(number, int | float) or number < 0:
                check.problem(f"age {key} must be a number of years ≥ 0", line, rule, "match.age")
                return
            fields[f"age_{key}"] = float(number)
    low, high = fields.get("age_min"), fields.get("age_max")
    if low is not None and high is not None and low >= high:
        check.problem("age min must be below max", line, rule, "match.age")


def _window(value: Any) -> tuple[int, int] | None:
    found = _WINDOW.match(value) if isinstance(value, str) else None
    if found is None:
        return None
    h1, m1, h2, m2 = (int(g) for g in found.groups())
    if h1 > 23 or h2 > 24 or m1 > 59 or m2 > 59 or (h2 == 24 and m2 != 0):
        return None
    start, end = h1 * 60 + m1, h2 * 60 + m2
    return None if start == end else (start, end)


DEFAULT_RULES = load_rules(DEFAULT_RULES_YAML, source="default")
