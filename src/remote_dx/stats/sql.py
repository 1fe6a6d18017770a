"""Portable SQL pieces for the statistics: Asia/Shanghai period buckets, durations in seconds and
percentiles, compiled per dialect so every query stays SQLAlchemy Core on SQLite and PostgreSQL.

Times are stored in UTC (DESIGN "Time"); figures are shown by the Asia/Shanghai calendar. China
has kept UTC+08:00 without daylight saving since 1991, so on SQLite the fixed ``+8 hours``
modifier is the same calendar as PostgreSQL's ``AT TIME ZONE 'Asia/Shanghai'`` for every time the
hub can hold.

Percentiles follow PostgreSQL's ``percentile_cont`` (linear interpolation between the closest
ranks, the "type 7" definition of Hyndman & Fan 1996); SQLite has no ordered-set aggregates, so
there the values are fetched per group and :func:`percentile_cont` computes the same figure.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Float, String, literal_column
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ColumnElement, FunctionElement

LOCAL_TZ = "Asia/Shanghai"


class Period(enum.StrEnum):
    DAY = "day"
    WEEK = "week"  # ISO week, labelled by its Monday
    MONTH = "month"
    YEAR = "year"


class shanghai_bucket(FunctionElement[str]):
    """The Asia/Shanghai calendar bucket of a UTC timestamp as text: ``2026-03-02`` (day; week =
    its Monday), ``2026-03`` (month) or ``2026`` (year). Sorting the text sorts the buckets."""

    type = String()
    inherit_cache = True

    def __init__(self, column: ColumnElement[Any], period: Period) -> None:
        # The period travels as a clause (not an attribute) so it is part of the statement's
        # cache key: a cached "day" statement must never answer a "week" query.
        super().__init__(column, literal_column(f"'{Period(period).value}'"))

    @property
    def period(self) -> Period:
        return Period(str(list(self.clauses)[1].name).strip("'"))  # type: ignore[attr-defined]


@compiles(shanghai_bucket, "sqlite")
def _bucket_sqlite(element: shanghai_bucket, compiler: Any, **kw: Any) -> str:
    column = compiler.process(next(iter(element.clauses)), **kw)
    local = f"{column}, '+8 hours'"
    if element.period is Period.DAY:
        return f"date({local})"
    if element.period is Period.WEEK:
        # 'weekday 0' moves forward to Sunday (or stays); six days back is that week's Monday.
        return f"date({local}, 'weekday 0', '-6 days')"
    if element.period is Period.MONTH:
        return f"strftime('%Y-%m', {local})"
    return f"strftime('%Y', {local})"


_FORMATS = {
    Period.DAY: "YYYY-MM-DD",
    Period.WEEK: "YYYY-MM-DD",
    Period.MONTH: "YYYY-MM",
    Period.YEAR: "YYYY",
}


def _trunc_postgresql(element: shanghai_bucket, compiler: Any, **kw: Any) -> str:
    column = compiler.process(next(iter(element.clauses)), **kw)
    local = f"({column} AT TIME ZONE '{LOCAL_TZ}')"
    return f"date_trunc('{element.period.value}', {local})"


@compiles(shanghai_bucket, "postgresql")
def _bucket_postgresql(element: shanghai_bucket, compiler: Any, **kw: Any) -> str:
    return f"to_char({_trunc_postgresql(element, compiler, **kw)}, '{_FORMATS[element.period]}')"


class shanghai_period_start(shanghai_bucket):
    """What to GROUP BY for :class:`shanghai_bucket`: on PostgreSQL the bucket's local start
    (a timestamp; the text label is a function of it, so the two group alike and PostgreSQL
    accepts the label in the select list), on SQLite the label itself."""

    inherit_cache = True


class local_period_label(FunctionElement[str]):
    """PostgreSQL: the :class:`shanghai_bucket` label of a bucket start already computed by
    :class:`shanghai_period_start` (grouped in a subquery)."""

    type = String()
    inherit_cache = True

    def __init__(self, column: ColumnElement[Any], period: Period) -> None:
        super().__init__(column, literal_column(f"'{Period(period).value}'"))

    @property
    def period(self) -> Period:
        return Period(str(list(self.clauses)[1].name).strip("'"))  # type: ignore[attr-defined]


@compiles(local_period_label, "postgresql")
def _label_postgresql(element: local_period_label, compiler: Any, **kw: Any) -> str:
    column = compiler.process(next(iter(element.clauses)), **kw)
    return f"to_char({column}, '{_FORMATS[element.period]}')"


@compiles(shanghai_period_start, "postgresql")
def _period_start_postgresql(element: shanghai_period_start, compiler: Any, **kw: Any) -> str:
    return _trunc_postgresql(element, compiler, **kw)


class seconds_between(FunctionElement[float]):
    """``later - earlier`` in seconds (NULL if either is NULL)."""

    type = Float()
    inherit_cache = True


@compiles(seconds_between, "sqlite")
def _seconds_sqlite(element: seconds_between, compiler: Any, **kw: Any) -> str:
    later, earlier = (compiler.process(c, **kw) for c in element.clauses)
    return f"((julianday({later}) - julianday({earlier})) * 86400.0)"


@compiles(seconds_between, "postgresql")
def _seconds_postgresql(element: seconds_between, compiler: Any, **kw: Any) -> str:
    later, earlier = (compiler.process(c, **kw) for c in element.clauses)
    return f"EXTRACT(EPOCH FROM ({later} - {earlier}))"


def percentile_cont(sorted_values: Sequence[float], fraction: float) -> float | None:
    """PostgreSQL's ``percentile_cont(fraction)`` over already sorted values (None if empty)."""
    if not sorted_values:
        return None
    position = fraction * (len(sorted_values) - 1)
    low = math.floor(position)
    high = math.ceil(position)
    if low == high:
        return float(sorted_values[low])
    weight = position - low
    return float(sorted_values[low]) * (1 - weight) + float(sorted_values[high]) * weight
