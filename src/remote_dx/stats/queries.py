"""The dashboard figures (issue 6), each a :class:`Table` by period and one dimension.

Where each fact is recorded:

- received: ``studies.received_at`` (the hub's clock; the SLA clock starts here), origin
  (township) ``studies.origin_id``, modality ``studies.modalities``;
- read: ``reports`` with status final/amended; the result is out at ``confirmed_at`` when a
  second signature was required, else ``signed_at``; the pool that read it ``reports.pool_id``
  (its level says whether an upper level read it: 基层检查、上级诊断); the reader
  ``reports.signed_by_id``; abnormal ``reports.positive``; critical ``reports.critical``;
- SLA: the due time of the study's first routing decision (``routing_decisions`` kind
  ``initial``), so a later escalation does not move the goal posts;
- claim → sign: ``worklist_items.signed_claim_at`` (the signer's claim, kept when signing clears
  the lease; migration 0005_stats) to the first signature;
- escalations and consultations: ``routing_decisions`` kind ``escalation`` (automatic: overdue,
  one level up) and ``consultation`` (manual 会诊), the target's level from its pool;
- critical values: ``critical_alerts`` (raised, acknowledged, by whom);
- technically unsatisfactory, sent back: ``ecg_analyses.technically_unsatisfactory`` and
  ``reacquire_requests`` (the notice to the township);
- results recognised and re-used (exams avoided): ``recognition_uses`` (migration 0005_stats);
- reader workload: signed reports per reader, by the time of signing.

Study figures count the studies *received* in each period (a cohort), so a month's TAT is that
of the studies received in the month, wherever the signature fell; workload counts by signing
time and recognition by the time of re-use. Periods are Asia/Shanghai calendar buckets
(:mod:`remote_dx.stats.sql`).
"""

from __future__ import annotations

import enum
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import Float, Select, and_, case, func, literal, literal_column, or_, select, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session, aliased
from sqlalchemy.sql.expression import ColumnElement

from remote_dx.core.clock import SHANGHAI
from remote_dx.core.models import (
    CriticalAlert,
    Institution,
    InstitutionLevel,
    RecognitionUse,
    ReportStatus,
    RoutingDecision,
    RoutingDecisionKind,
    StudyFact,
    User,
)
from remote_dx.stats import facts
from remote_dx.stats.sql import (
    Period,
    local_period_label,
    percentile_cont,
    seconds_between,
    shanghai_bucket,
    shanghai_period_start,
)

UPPER = (InstitutionLevel.COUNTY, InstitutionLevel.CITY, InstitutionLevel.PROVINCE)
ABOVE_COUNTY = (InstitutionLevel.CITY, InstitutionLevel.PROVINCE)
READ_STATUSES = (ReportStatus.FINAL, ReportStatus.AMENDED)
SORT_MEMORY = "64MB"


class Dimension(enum.StrEnum):
    TOWNSHIP = "township"
    COUNTY = "county"
    POOL = "pool"
    MODALITY = "modality"
    READER = "reader"


DIMENSION_LABELS = {
    Dimension.TOWNSHIP: "乡镇卫生院",
    Dimension.COUNTY: "县（医共体）",
    Dimension.POOL: "诊断中心",
    Dimension.MODALITY: "检查类型",
    Dimension.READER: "诊断医师",
}
PERIOD_LABELS = {Period.DAY: "日", Period.WEEK: "周", Period.MONTH: "月", Period.YEAR: "年"}


class UnknownTable(LookupError):
    pass


@dataclass(frozen=True)
class Column:
    key: str
    label: str  # 简体中文, as shown and exported
    label_en: str
    kind: str = "int"  # int | float | percent | minutes | text


@dataclass
class Table:
    name: str
    title: str
    title_en: str
    columns: list[Column]
    rows: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "title_en": self.title_en,
            "columns": [c.__dict__ for c in self.columns],
            "rows": self.rows,
        }


@dataclass(frozen=True)
class StatsQuery:
    """What to count: ``period`` buckets (None: one bucket for the whole range), grouped by
    ``by`` (None: all together), received in ``start``..``end`` (Asia/Shanghai dates,
    inclusive), optionally one modality (``ecg``, ``imaging`` or a code such as ``DX``), one
    county (lead hospital id) and one pool (reading institution id; a reader's scope)."""

    period: Period | None = Period.MONTH
    by: Dimension | None = None
    start: date | None = None
    end: date | None = None
    modality: str | None = None
    county_id: int | None = None
    pool_id: int | None = None


def local_day_start(day: date) -> datetime:
    """00:00 Asia/Shanghai of ``day`` as an aware UTC datetime."""
    return datetime.combine(day, time(0), tzinfo=SHANGHAI).astimezone(UTC)


# --- the joins every table shares ------------------------------------------------------------


_FACTS_FRESH = "remote_dx.stats.facts_fresh"


@dataclass
class _Base:
    """The study fact rows (:mod:`remote_dx.stats.facts`: the study ⟕ worklist item ⟕ report with
    the origin's county, the reading pool and its level, the first SLA due time), optionally
    with the tree of another institution standing for the township (``origin_col``)."""

    origin_col: Any = None
    origin: Any = None
    parent: Any = None
    grand: Any = None

    @classmethod
    def make(cls, session: Session | None = None, origin_col: Any = None) -> _Base:
        if session is not None:
            # Once per session (one request): a dashboard asks for seven tables, and on SQLite
            # a refresh rebuilds every fact row.
            if not session.info.get(_FACTS_FRESH):
                facts.refresh(session)
                session.info[_FACTS_FRESH] = True
            if session.get_bind().dialect.name == "postgresql":
                # One dashboard figure sorts up to a year of fact rows (percentiles, groups);
                # the default 4 MB spills that to disk. For this transaction only.
                session.execute(text(f"SET LOCAL work_mem = '{SORT_MEMORY}'"))
        if origin_col is None:
            return cls()
        return cls(
            origin_col=origin_col,
            origin=aliased(Institution, name="origin"),
            parent=aliased(Institution, name="origin_parent"),
            grand=aliased(Institution, name="origin_grand"),
        )

    def township(self) -> ColumnElement[Any]:
        return StudyFact.origin_id if self.origin_col is None else self.origin.id

    def county(self) -> ColumnElement[Any]:
        if self.origin_col is None:
            return StudyFact.county_id
        return case(
            (self.origin.level.in_(UPPER), self.origin.id),
            (self.parent.level.in_(UPPER), self.parent.id),
            else_=self.grand.id,
        )

    @staticmethod
    def pool() -> ColumnElement[Any]:
        return StudyFact.pool_id

    @staticmethod
    def pool_level() -> ColumnElement[Any]:
        return StudyFact.pool_level

    @staticmethod
    def modality() -> ColumnElement[Any]:
        return case(
            (StudyFact.modalities.like("%ECG%"), literal_column("'ECG'")),
            else_=StudyFact.modalities,
        )

    @staticmethod
    def result_at() -> ColumnElement[Any]:
        return StudyFact.result_at

    @staticmethod
    def is_read() -> ColumnElement[bool]:
        return StudyFact.is_read.is_(True)

    def dimension(self, by: Dimension) -> ColumnElement[Any]:
        return {
            Dimension.TOWNSHIP: self.township,
            Dimension.COUNTY: self.county,
            Dimension.POOL: self.pool,
            Dimension.MODALITY: self.modality,
            Dimension.READER: lambda: StudyFact.signed_by_id,
        }[by]()

    def select_from(self, statement: Select[Any], *, first: Any = None) -> Select[Any]:
        """The fact rows; ``first`` = (entity, on) joined to them before the origin's tree."""
        statement = statement.select_from(StudyFact)
        if first is not None:
            statement = statement.join(*first)
        if self.origin_col is None:
            return statement
        return (
            statement.join(self.origin, self.origin.id == self.origin_col)
            .outerjoin(self.parent, self.parent.id == self.origin.parent_id)
            .outerjoin(self.grand, self.grand.id == self.parent.parent_id)
        )

    def filters(self, query: StatsQuery, time_col: ColumnElement[Any]) -> list[Any]:
        where: list[Any] = []
        if query.start is not None:
            where.append(time_col >= local_day_start(query.start))
        if query.end is not None:
            where.append(time_col < local_day_start(query.end + timedelta(days=1)))
        if query.modality:
            wanted = query.modality.strip()
            modalities = StudyFact.modalities
            if wanted.lower() == "ecg":
                where.append(modalities.like("%ECG%"))
            elif wanted.lower() == "imaging":
                where.append(or_(modalities.is_(None), ~modalities.like("%ECG%")))
            else:
                where.append(modalities == wanted.upper())
        if query.county_id is not None:
            where.append(self.county() == query.county_id)
        if query.pool_id is not None:
            where.append(self.pool() == query.pool_id)
        return where


# --- grouped aggregation with portable percentiles ---------------------------------------------


@dataclass(frozen=True)
class _Percentile:
    value: ColumnElement[Any]  # seconds (or any number); NULLs are ignored
    fraction: float
    scale: float = 1 / 60  # seconds → minutes


def _aggregate(
    session: Session,
    base: _Base,
    query: StatsQuery,
    *,
    time_col: ColumnElement[Any],
    sums: dict[str, ColumnElement[Any]],
    percentiles: dict[str, _Percentile],
    joins: Callable[[Select[Any]], Select[Any]] | None = None,
    first: Any = None,
    extra_where: Sequence[Any] = (),
) -> list[dict[str, Any]]:
    keys: list[tuple[str, ColumnElement[Any]]] = []
    # Grouped by the bucket's start (a timestamp: sorts far cheaper than its text label, which
    # is computed from the grouped value).
    groups: list[ColumnElement[Any]] = []
    if query.period is not None:
        keys.append(("period", shanghai_bucket(time_col, query.period)))
        groups.append(shanghai_period_start(time_col, query.period))
    if query.by is not None:
        keys.append(("key", base.dimension(query.by)))
        groups.append(keys[-1][1])
    key_cols = [expr.label(name) for name, expr in keys]
    where = [*base.filters(query, time_col), *extra_where]

    def framed(statement: Select[Any]) -> Select[Any]:
        statement = base.select_from(statement, first=first)
        if joins is not None:
            statement = joins(statement)
        return statement.where(*where)

    postgres = session.get_bind().dialect.name == "postgresql"
    # Percentile inputs, one per distinct value expression (its fractions computed together).
    by_value: dict[int, list[tuple[str, _Percentile]]] = defaultdict(list)
    exprs: dict[int, ColumnElement[Any]] = {}
    for name, p in percentiles.items():
        by_value[id(p.value)].append((name, p))
        exprs[id(p.value)] = p.value
    if postgres and percentiles:
        statement = _grouped_percentiles(framed, keys, groups, sums, by_value, exprs, query)
    else:
        statement = framed(select(*key_cols, *(expr.label(name) for name, expr in sums.items())))
        if keys:
            statement = statement.group_by(*groups)
    rows: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in session.execute(statement).mappings():
        group = tuple(row[name] for name, _ in keys)
        values = {name: row[name] for name, _ in keys}
        values.update({name: int(row[name] or 0) for name in sums})
        for name in percentiles:
            values[name] = None
        if postgres:
            for ordinal, wanted in enumerate(by_value.values()):
                figures = row[f"pct{ordinal}"]
                for index, (name, p) in enumerate(wanted):
                    raw = None if figures is None else figures[index]
                    values[name] = None if raw is None else round(float(raw) * p.scale, 2)
        rows[group] = values
    if not postgres and percentiles:
        # SQLite: one ordered fetch per distinct value expression, the fractions in Python.
        for ident, wanted in by_value.items():
            value = exprs[ident]
            fetch = framed(select(*key_cols, value.label("v"))).where(value.is_not(None))
            fetch = fetch.order_by(*(expr for _, expr in keys), value)
            grouped: dict[tuple[Any, ...], list[float]] = defaultdict(list)
            for row in session.execute(fetch).mappings():
                grouped[tuple(row[name] for name, _ in keys)].append(float(row["v"]))
            for group, values_list in grouped.items():
                target = rows.get(group)
                if target is None:
                    continue
                for name, p in wanted:
                    figure = percentile_cont(values_list, p.fraction)
                    target[name] = None if figure is None else round(figure * p.scale, 2)
    # Periods sort as text; dimension keys are ids or codes (one type per column); None last.
    return sorted(
        rows.values(),
        key=lambda r: tuple((r.get(n) is None, r.get(n) or 0) for n, _ in keys),
    )


def _grouped_percentiles(
    framed: Callable[[Select[Any]], Select[Any]],
    keys: list[tuple[str, ColumnElement[Any]]],
    groups: list[ColumnElement[Any]],
    sums: dict[str, ColumnElement[Any]],
    by_value: dict[int, list[tuple[str, _Percentile]]],
    exprs: dict[int, ColumnElement[Any]],
    query: StatsQuery,
) -> Select[Any]:
    """PostgreSQL: the groups by hashing, each group's values gathered with ``array_agg``, then
    ``percentile_cont`` over each group's array. The same figures as ``percentile_cont`` in the
    grouped query itself (NULLs ignored alike), without the sort of every row by the group
    keys that an ordered-set aggregate forces on the grouping (it cannot be hashed)."""
    inner_cols = [group.label(f"g{index}") for index, group in enumerate(groups)]
    inner_cols += [expr.label(name) for name, expr in sums.items()]
    # Named by ordinal, not by id(): the SQL text must repeat for the statement cache.
    ordinal = {ident: index for index, ident in enumerate(by_value)}
    inner_cols += [func.array_agg(exprs[ident]).label(f"a{ordinal[ident]}") for ident in by_value]
    statement = framed(select(*inner_cols))
    if groups:
        statement = statement.group_by(*groups)
    grouped = statement.subquery("grouped")
    outer: list[Any] = []
    for index, (name, _) in enumerate(keys):
        column = grouped.c[f"g{index}"]
        if name == "period" and query.period is not None:
            outer.append(local_period_label(column, query.period).label(name))
        else:
            outer.append(column.label(name))
    outer += [grouped.c[name] for name in sums]
    for ident, wanted in by_value.items():
        value = func.unnest(grouped.c[f"a{ordinal[ident]}"]).column_valued("v")
        fractions = postgresql.array([literal(p.fraction, Float) for _, p in wanted])
        figure = select(func.percentile_cont(fractions).within_group(value)).scalar_subquery()
        outer.append(figure.label(f"pct{ordinal[ident]}"))
    return select(*outer).select_from(grouped)


def _count(condition: ColumnElement[bool]) -> ColumnElement[Any]:
    return func.sum(case((condition, 1), else_=0))


def _rate(rows: list[dict[str, Any]], name: str, part: str, whole: str) -> None:
    for row in rows:
        row[name] = round(100.0 * row[part] / row[whole], 1) if row[whole] else None


# --- the tables --------------------------------------------------------------------------------


def volumes(session: Session, query: StatsQuery) -> Table:
    base = _Base.make(session)
    read = base.is_read()
    rows = _aggregate(
        session,
        base,
        query,
        time_col=StudyFact.received_at,
        sums={
            "received": func.count(StudyFact.study_pk),
            "read": _count(read),
            "read_upper": _count(and_(read, base.pool_level().in_(UPPER))),
            "read_above_county": _count(and_(read, base.pool_level().in_(ABOVE_COUNTY))),
            "positive": _count(and_(read, StudyFact.positive.is_(True))),
            "judged": _count(and_(read, StudyFact.positive.is_not(None))),
            "critical": _count(and_(read, StudyFact.critical.is_(True))),
        },
        percentiles={},
    )
    _rate(rows, "upper_share", "read_upper", "read")
    _rate(rows, "positive_rate", "positive", "judged")
    return Table(
        "volumes",
        "检查量与诊断量",
        "Volumes received and read",
        [
            Column("received", "接收检查数", "received"),
            Column("read", "已诊断数", "read"),
            Column("read_upper", "上级诊断数", "read by upper level"),
            Column("upper_share", "上级诊断占比(%)", "share read by upper level (%)", "percent"),
            Column("read_above_county", "县级以上诊断数", "read above county"),
            Column("positive", "阳性数", "positive"),
            Column("positive_rate", "阳性率(%)", "positive rate (%)", "percent"),
            Column("critical", "危急值报告数", "critical results"),
        ],
        rows,
    )


def turnaround(session: Session, query: StatsQuery) -> Table:
    base = _Base.make(session)
    read = base.is_read()
    # Both durations are set only for read studies (stats/facts.py), as counted here.
    tat = StudyFact.tat_seconds
    claim_sign = StudyFact.claim_sign_seconds
    rows = _aggregate(
        session,
        base,
        query,
        time_col=StudyFact.received_at,
        sums={
            "read": _count(read),
            "sla_met": _count(StudyFact.sla_met.is_(True)),
            "with_sla": _count(StudyFact.with_sla.is_(True)),
        },
        percentiles={
            "tat_median_min": _Percentile(tat, 0.5),
            "tat_p90_min": _Percentile(tat, 0.9),
            "claim_sign_median_min": _Percentile(claim_sign, 0.5),
            "claim_sign_p90_min": _Percentile(claim_sign, 0.9),
        },
    )
    _rate(rows, "sla_rate", "sla_met", "with_sla")
    return Table(
        "turnaround",
        "报告时效",
        "Turnaround (received → signed)",
        [
            Column("read", "已诊断数", "read"),
            Column("tat_median_min", "报告时间中位数(分钟)", "TAT median (min)", "minutes"),
            Column("tat_p90_min", "报告时间P90(分钟)", "TAT 90th percentile (min)", "minutes"),
            Column("sla_met", "按时完成数", "within SLA"),
            Column("sla_rate", "时效达标率(%)", "SLA compliance (%)", "percent"),
            Column(
                "claim_sign_median_min",
                "领取至签发中位数(分钟)",
                "claim → sign median (min)",
                "minutes",
            ),
            Column(
                "claim_sign_p90_min", "领取至签发P90(分钟)", "claim → sign P90 (min)", "minutes"
            ),
        ],
        rows,
    )


def escalations(session: Session, query: StatsQuery) -> Table:
    base = _Base.make(session)
    target = aliased(Institution, name="target_pool")
    moved = RoutingDecision.pool_id != func.coalesce(RoutingDecision.from_pool_id, -1)
    consult = RoutingDecision.kind == RoutingDecisionKind.CONSULTATION
    auto = and_(RoutingDecision.kind == RoutingDecisionKind.ESCALATION, moved)
    either = or_(consult, auto)
    rows = _aggregate(
        session,
        base,
        query,
        time_col=StudyFact.received_at,
        sums={
            "consultations": _count(consult),
            "auto_escalations": _count(auto),
            "overdue_at_top": _count(
                and_(RoutingDecision.kind == RoutingDecisionKind.ESCALATION, ~moved)
            ),
            "studies": func.count(func.distinct(case((either, StudyFact.study_pk), else_=None))),
            "to_county": _count(and_(either, target.level == InstitutionLevel.COUNTY)),
            "to_city": _count(and_(either, target.level == InstitutionLevel.CITY)),
            "to_province": _count(and_(either, target.level == InstitutionLevel.PROVINCE)),
        },
        percentiles={},
        joins=lambda s: s.join(
            RoutingDecision, RoutingDecision.study_pk == StudyFact.study_pk
        ).join(target, target.id == RoutingDecision.pool_id),
        extra_where=[
            RoutingDecision.kind.in_(
                (RoutingDecisionKind.CONSULTATION, RoutingDecisionKind.ESCALATION)
            )
        ],
    )
    return Table(
        "escalations",
        "会诊与升级",
        "Consultations and escalations",
        [
            Column("studies", "涉及检查数", "studies"),
            Column("consultations", "主动会诊(人工)", "consultations (manual)"),
            Column("auto_escalations", "超时自动升级", "automatic escalations (overdue)"),
            Column("overdue_at_top", "最高级超时", "overdue at the top"),
            Column("to_county", "至县级", "to county"),
            Column("to_city", "至市级", "to city"),
            Column("to_province", "至省级", "to province"),
        ],
        rows,
    )


def critical(session: Session, query: StatsQuery) -> Table:
    base = _Base.make(session)
    acked = CriticalAlert.acknowledged_at.is_not(None)
    rows = _aggregate(
        session,
        base,
        query,
        time_col=StudyFact.received_at,
        sums={
            "alerts": func.count(CriticalAlert.id),
            "from_analysis": _count(CriticalAlert.source == "ecg-analysis"),
            "acknowledged": _count(acked),
            "unacknowledged": _count(~acked),
        },
        percentiles={
            "ack_median_min": _Percentile(
                seconds_between(CriticalAlert.acknowledged_at, CriticalAlert.raised_at), 0.5
            ),
            "ack_p90_min": _Percentile(
                seconds_between(CriticalAlert.acknowledged_at, CriticalAlert.raised_at), 0.9
            ),
        },
        joins=lambda s: s.join(CriticalAlert, CriticalAlert.study_pk == StudyFact.study_pk),
    )
    return Table(
        "critical",
        "危急值",
        "Critical values",
        [
            Column("alerts", "危急值数", "critical values"),
            Column("from_analysis", "自动分析发现", "raised by ECG analysis"),
            Column("acknowledged", "已确认接收", "acknowledged"),
            Column("unacknowledged", "未确认", "unacknowledged"),
            Column("ack_median_min", "确认时间中位数(分钟)", "ack time median (min)", "minutes"),
            Column("ack_p90_min", "确认时间P90(分钟)", "ack time P90 (min)", "minutes"),
        ],
        rows,
    )


def quality(session: Session, query: StatsQuery) -> Table:
    base = _Base.make(session)
    rows = _aggregate(
        session,
        base,
        query,
        time_col=StudyFact.received_at,
        sums={
            "analysed": _count(StudyFact.analysed.is_(True)),
            "unsatisfactory": _count(
                and_(StudyFact.analysed.is_(True), StudyFact.unsatisfactory.is_(True))
            ),
            "sent_back": _count(StudyFact.sent_back.is_(True)),
        },
        percentiles={},
        extra_where=[or_(StudyFact.analysed.is_(True), StudyFact.sent_back.is_(True))],
    )
    _rate(rows, "unsatisfactory_rate", "unsatisfactory", "analysed")
    return Table(
        "quality",
        "技术质量（退回重采）",
        "Technically unsatisfactory, sent back",
        [
            Column("analysed", "心电自动分析数", "ECGs analysed"),
            Column("unsatisfactory", "技术不合格", "technically unsatisfactory"),
            Column("unsatisfactory_rate", "不合格率(%)", "unsatisfactory rate (%)", "percent"),
            Column("sent_back", "退回重采数", "sent back for re-acquisition"),
        ],
        rows,
    )


def recognition(session: Session, query: StatsQuery) -> Table:
    # Township = the institution that re-used the result (the exam it did not repeat).
    base = _Base.make(session, origin_col=RecognitionUse.institution_id)
    rows = _aggregate(
        session,
        base,
        query,
        time_col=RecognitionUse.used_at,
        sums={
            "exams_avoided": func.count(RecognitionUse.id),
            "ecg": _count(RecognitionUse.exam == "ecg"),
            "imaging": _count(RecognitionUse.exam != "ecg"),
            "patients_studies": func.count(func.distinct(RecognitionUse.study_pk)),
        },
        percentiles={},
        first=(RecognitionUse, RecognitionUse.study_pk == StudyFact.study_pk),
    )
    return Table(
        "recognition",
        "结果互认",
        "Results recognised and re-used",
        [
            Column("exams_avoided", "互认次数(避免重复检查)", "re-used (exams avoided)"),
            Column("ecg", "心电", "ECG"),
            Column("imaging", "影像", "imaging"),
            Column("patients_studies", "被互认检查数", "distinct results re-used"),
        ],
        rows,
    )


def workload(session: Session, query: StatsQuery) -> Table:
    base = _Base.make(session)
    query = StatsQuery(**{**query.__dict__, "by": query.by or Dimension.READER})
    read = base.is_read()
    ecg = StudyFact.is_ecg.is_(True)
    # NULL modalities count as neither ECG nor imaging, as ``NOT (NULL LIKE …)`` did.
    imaging = StudyFact.is_ecg.is_(False)
    claim_sign = StudyFact.claim_sign_seconds  # set only for read studies with a claim
    rows = _aggregate(
        session,
        base,
        query,
        time_col=StudyFact.signed_at,
        sums={
            "signed": func.count(StudyFact.report_id),
            "ecg": _count(ecg),
            "imaging": _count(imaging),
            "positive": _count(StudyFact.positive.is_(True)),
            "critical": _count(StudyFact.critical.is_(True)),
        },
        percentiles={"claim_sign_median_min": _Percentile(claim_sign, 0.5)},
        extra_where=[read],
    )
    return Table(
        "workload",
        "医师工作量",
        "Reader workload",
        [
            Column("signed", "签发报告数", "reports signed"),
            Column("ecg", "心电", "ECG"),
            Column("imaging", "影像", "imaging"),
            Column("positive", "阳性", "positive"),
            Column("critical", "危急值", "critical"),
            Column(
                "claim_sign_median_min",
                "领取至签发中位数(分钟)",
                "claim → sign median (min)",
                "minutes",
            ),
        ],
        rows,
    )


TABLES: dict[str, Callable[[Session, StatsQuery], Table]] = {
    "volumes": volumes,
    "turnaround": turnaround,
    "escalations": escalations,
    "critical": critical,
    "quality": quality,
    "recognition": recognition,
    "workload": workload,
}


def _labels(session: Session, by: Dimension, keys: set[Any]) -> dict[Any, str]:
    keys.discard(None)
    if not keys:
        return {}
    if by is Dimension.MODALITY:
        names = {"ECG": "心电图"}
        return {k: names.get(str(k), str(k)) for k in keys}
    if by is Dimension.READER:
        found = session.execute(select(User.id, User.full_name).where(User.id.in_(keys)))
    else:
        found = session.execute(
            select(Institution.id, Institution.name).where(Institution.id.in_(keys))
        )
    return {k: v for k, v in found.all()}


def table(session: Session, name: str, query: StatsQuery) -> Table:
    """One table by name, with the dimension's labels (institution, reader, modality names)."""
    make = TABLES.get(name)
    if make is None:
        raise UnknownTable(f"unknown table {name!r}; use one of {', '.join(TABLES)}")
    result = make(session, query)
    lead: list[Column] = []
    if query.period is not None:
        lead.append(Column("period", PERIOD_LABELS[query.period], query.period.value, "text"))
    by = query.by if name != "workload" else (query.by or Dimension.READER)
    if by is not None:
        labels = _labels(session, by, {row.get("key") for row in result.rows})
        for row in result.rows:
            row["label"] = labels.get(row.get("key"), "—" if row.get("key") is None else "?")
        lead.append(Column("label", DIMENSION_LABELS[by], by.value, "text"))
    result.columns = lead + result.columns
    return result


def network(session: Session, query: StatsQuery) -> dict[str, Any]:
    """The referral tree (province → city → county → township) with each institution's studies
    received (as origin) and read (as pool) in the query's range: the dashboard's network map."""
    base = _Base.make(session)
    scoped = StatsQuery(**{**query.__dict__, "period": None, "by": None})
    where = base.filters(scoped, StudyFact.received_at)
    received = dict(
        session.execute(
            base.select_from(select(StudyFact.origin_id, func.count(StudyFact.study_pk)))
            .where(*where)
            .group_by(StudyFact.origin_id)
        ).all()
    )
    read = dict(
        session.execute(
            base.select_from(select(StudyFact.pool_id, func.count(StudyFact.report_id)))
            .where(*where, base.is_read())
            .group_by(StudyFact.pool_id)
        ).all()
    )
    nodes: dict[int, dict[str, Any]] = {}
    parents: dict[int, int | None] = {}
    for inst in session.scalars(select(Institution).order_by(Institution.id)):
        nodes[inst.id] = {
            "id": inst.id,
            "code": inst.code,
            "name": inst.name,
            "level": InstitutionLevel(inst.level).value,
            "received": int(received.get(inst.id, 0)),
            "read": int(read.get(inst.id, 0)),
            "children": [],
        }
        parents[inst.id] = inst.parent_id
    roots: list[dict[str, Any]] = []
    for ident, node in nodes.items():
        parent = parents[ident]
        (nodes[parent]["children"] if parent in nodes else roots).append(node)

    def total(node: dict[str, Any]) -> int:
        node["value"] = node["received"] + sum(total(c) for c in node["children"])
        return int(node["value"])

    for root in roots:
        total(root)
    return {"name": "network", "title": "医共体网络", "roots": roots}


def network_table(tree: dict[str, Any]) -> Table:
    """The network tree flattened for CSV/XLSX export."""
    rows: list[dict[str, Any]] = []

    def walk(node: dict[str, Any], parent: str | None, depth: int) -> None:
        rows.append(
            {
                "name": "　" * depth + node["name"],
                "code": node["code"],
                "level": node["level"],
                "parent": parent,
                "received": node["received"],
                "read": node["read"],
                "subtree_received": node["value"],
            }
        )
        for child in node["children"]:
            walk(child, node["name"], depth + 1)

    for root in tree["roots"]:
        walk(root, None, 0)
    return Table(
        "network",
        "医共体网络",
        "Network",
        [
            Column("name", "机构", "institution", "text"),
            Column("code", "编码", "code", "text"),
            Column("level", "级别", "level", "text"),
            Column("parent", "上级机构", "parent", "text"),
            Column("received", "送检数", "studies sent"),
            Column("read", "诊断数", "studies read"),
            Column("subtree_received", "下辖合计送检", "sent incl. members"),
        ],
        rows,
    )
