"""Worklist pages kept by an API process until their pool's change counter moves.

A reader's worklist re-reads itself on every live event and on every refresh; between two
changes of the pool it reads the same page again and again. Building a page of 50 entries and
its JSON was two thirds of the request's CPU in the API process. Here a reader's page (scope:
their institution's pool) is kept as the JSON bytes it was answered with, keyed by the pool and
every filter, order and paging value, with the pool's change counter
(:class:`remote_dx.core.models.WorklistVersion`) as read *before* the page was.

Why that is exact: PostgreSQL triggers count the pool's counter up in the same transaction as
every change to what the page shows (migration 0009). A request reads the counter first and
the page after it, so a page kept under counter *v* is at least as new as *v*; a later request
that reads *v* again knows nothing committed since that could change the page; any change
commits a new counter, and the next request reads it and builds the page afresh.

What time changes on its own is bounded: an entry turns ``overdue`` at its due time, so a page
is kept no later than the earliest future due time among its unsigned entries; and its
``total`` may come from the few-seconds count cache (:data:`service.COUNT_CACHE_SECONDS`), so
no page is kept longer than that either.

Not kept: technicians' and administrators' pages (their scope is not one pool), pages filtered
on ``overdue`` (time decides those), and anything on a database without the counter rows
(SQLite has no triggers, so no counter row: the user's ``pool_version`` is None there).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from datetime import datetime, timedelta
from typing import Any

from remote_dx.core.models import Role, User, WorklistStatus
from remote_dx.worklist import service
from remote_dx.worklist.schemas import WorklistPage
from remote_dx.worklist.service import READER_ROLES, WorklistQuery, query_shape


def page_key(user: User, query: WorklistQuery) -> tuple[Any, ...] | None:
    """The key ``user``'s page of ``query`` is kept under, or None when it is never kept."""
    if Role(user.role) not in READER_ROLES or user.institution_id is None:
        return None
    shape = query_shape(user, query)  # None with an overdue filter
    # Readers, senior readers and supervisors of a pool see the same page.
    return None if shape is None else ("pool", *shape[1:])


def fresh_until(page: WorklistPage, now: datetime) -> datetime:
    """Until when ``page``, read at ``now``, stays what a fresh read would give if nothing
    is written meanwhile."""
    until = now + timedelta(seconds=service.COUNT_CACHE_SECONDS)
    for entry in page.items:
        if entry.status != WorklistStatus.SIGNED and now <= entry.due_at < until:
            until = entry.due_at
    return until


class KeptPages:
    """Pages as answered, per key, with the counter they were read under; at most ``capacity``
    (least recently used out first). Thread-safe: the hot reads run in a thread pool."""

    def __init__(self, capacity: int = 512) -> None:
        self.capacity = capacity
        self._pages: OrderedDict[tuple[Any, ...], tuple[int, datetime, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[Any, ...], version: int, now: datetime) -> bytes | None:
        with self._lock:
            kept = self._pages.get(key)
            if kept is None or kept[0] != version or now >= kept[1]:
                return None
            self._pages.move_to_end(key)
            return kept[2]

    def put(self, key: tuple[Any, ...], version: int, until: datetime, body: bytes) -> None:
        with self._lock:
            kept = self._pages.get(key)
            if kept is not None and kept[0] > version:
                return  # a concurrent request already kept a newer page
            self._pages[key] = (version, until, body)
            self._pages.move_to_end(key)
            while len(self._pages) > self.capacity:
                self._pages.popitem(last=False)
