"""SQLAlchemy Core statements run on psycopg's own cursor, for the few paths where SQLAlchemy's
per-statement handling costs more than the database's answer.

A statement is still written once, in SQLAlchemy, and compiled once for the psycopg dialect:
the SQL psycopg runs is the SQL :meth:`sqlalchemy.engine.Connection.execute` would run, with the
bound values the statement fixes itself (a constant id). A query's rows go through the result
processing SQLAlchemy gives its columns' types on that dialect (``UTCDateTime`` in UTC, enums as
enum members): they are the rows ``Connection.execute`` returns, as named tuples.

Used by the API's hot reads on PostgreSQL; :func:`autocommitting` also by the audit chain's appends.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from sqlalchemy.dialects.postgresql import psycopg as psycopg_dialect
from sqlalchemy.sql import Select

DIALECT = psycopg_dialect.dialect()


def compile_for_psycopg(statement: Any, **compile_options: Any) -> tuple[str, dict[str, Any]]:
    """``statement`` as the SQL psycopg's cursor runs (``%(name)s`` placeholders), with the
    values it fixes itself; the caller's values are added to those."""
    compiled = statement.compile(dialect=DIALECT, **compile_options)
    fixed = {name: bind.value for bind, name in compiled.bind_names.items() if not bind.required}
    return str(compiled), fixed


class PsycopgQuery:
    """A Core SELECT compiled once for psycopg, its rows processed as SQLAlchemy would."""

    def __init__(self, statement: Select[Any], row_name: str = "Row") -> None:
        self.sql, self.fixed = compile_for_psycopg(statement)
        self._columns = list(statement.selected_columns)
        self.row = namedtuple(row_name, [c.key for c in self._columns])  # type: ignore[misc]
        # Made from the first answer's column types (a numeric type's processor depends on the
        # type the server answers with, as in SQLAlchemy's own result handling).
        self._processors: tuple[tuple[int, Callable[[Any], Any]], ...] | None = None

    def _processors_for(
        self, cursor: psycopg.Cursor[Any]
    ) -> tuple[tuple[int, Callable[[Any], Any]], ...]:
        processors = []
        described = cursor.description or []
        for index, (column, answered) in enumerate(zip(self._columns, described, strict=True)):
            type_ = column.type.dialect_impl(DIALECT)
            process = type_.result_processor(DIALECT, answered.type_code)
            if process is not None:
                processors.append((index, process))
        return tuple(processors)

    def rows(self, cursor: psycopg.Cursor[Any], values: dict[str, Any]) -> list[Any]:
        """Every row of the query with ``values``, prepared on the connection at once."""
        self._execute(cursor, values)
        return self._all(cursor)

    def first(self, cursor: psycopg.Cursor[Any], values: dict[str, Any]) -> Any | None:
        """The first row, or None."""
        self._execute(cursor, values)
        return self._first(cursor)

    def start(self, connection: psycopg.Connection[Any], values: dict[str, Any]) -> Started:
        """Send the query on a cursor of its own: inside ``connection.pipeline()`` it goes out
        with the others and its rows are read after the pipeline's sync."""
        cursor = connection.cursor()
        self._execute(cursor, values)
        return Started(self, cursor)

    def _execute(self, cursor: psycopg.Cursor[Any], values: dict[str, Any]) -> None:
        cursor.execute(self.sql, {**self.fixed, **values} if self.fixed else values, prepare=True)

    def _first(self, cursor: psycopg.Cursor[Any]) -> Any | None:
        raw = cursor.fetchone()
        return None if raw is None else self._row(cursor, raw)

    def _all(self, cursor: psycopg.Cursor[Any]) -> list[Any]:
        return [self._row(cursor, raw) for raw in cursor.fetchall()]

    def _row(self, cursor: psycopg.Cursor[Any], raw: tuple[Any, ...]) -> Any:
        processors = self._processors
        if processors is None:
            processors = self._processors = self._processors_for(cursor)
        if not processors:
            return self.row._make(raw)
        values = list(raw)
        for index, process in processors:
            values[index] = process(values[index])
        return self.row._make(values)


class Started:
    """A :class:`PsycopgQuery` sent with :meth:`PsycopgQuery.start`, its rows still to read."""

    def __init__(self, query: PsycopgQuery, cursor: psycopg.Cursor[Any]) -> None:
        self.query, self.cursor = query, cursor

    def first(self) -> Any | None:
        with self.cursor:
            return self.query._first(self.cursor)

    def rows(self) -> list[Any]:
        with self.cursor:
            return self.query._all(self.cursor)


@contextmanager
def autocommitting(connection: psycopg.Connection[Any]) -> Iterator[None]:
    """``connection`` in autocommit, then back as its pool lent it (no round trip: it is idle),
    whatever happened in between: a hot read refused with 401, say. Left in autocommit, the
    next session on the connection would run without a transaction: a ``SET LOCAL`` there
    (:func:`remote_dx.worklist.service.plan_joins_as_written`) would do nothing, and the audit
    chain's head lock (:func:`remote_dx.core.audit._link`) would not be held to the commit."""
    connection.autocommit = True
    try:
        yield
    finally:
        if not (connection.broken or connection.closed):
            connection.autocommit = False
