"""Time: everything is stored in UTC; shown in Asia/Shanghai.

A module-level clock that tests can move lets SLA and quiet-period logic be tested without sleeping.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

SHANGHAI = ZoneInfo("Asia/Shanghai")

_offset = timedelta(0)


def utcnow() -> datetime:
    """Aware UTC now, shifted by any test offset."""
    return datetime.now(UTC) + _offset


def advance(delta: timedelta) -> None:
    """Move the clock forward (tests only)."""
    global _offset
    _offset += delta


def reset() -> None:
    global _offset
    _offset = timedelta(0)


def as_utc(value: datetime) -> datetime:
    """SQLite returns naive datetimes; treat naive values as UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def to_shanghai(value: datetime) -> datetime:
    return as_utc(value).astimezone(SHANGHAI)
