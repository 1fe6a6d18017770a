"""The audit trail: append-only records linked by a SHA-256 hash chain.

Semantics follow IHE ATNA (ITI-20 "Record Audit Event") and the DICOM audit message schema
(PS3.15 A.5): who (user, role, institution — the *active participant*), what (action, outcome per
A.5.1 EventOutcomeIndicator 0/4/8/12), on what (patient and object — the *participant objects*,
e.g. a Study Instance UID), from where (client network address) and when.

Integrity: each record carries ``prev_hash`` (the previous record's ``hash``) and ``hash`` =
SHA-256 over the canonical JSON of its own fields and ``prev_hash``; ``seq`` numbers records
1, 2, 3 … without gaps. Changing, inserting or deleting a record therefore breaks the chain at
that point, and :func:`verify_chain` names the first broken record. The head row
(``audit_chain_head``) holds the last ``seq`` and ``hash``: it detects a truncated tail, and its
``UPDATE`` is the lock that serialises writers — two concurrent appends can never link to the
same predecessor, on SQLite (one writer at a time) and on PostgreSQL (row lock) alike.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

import psycopg
from sqlalchemy import Engine, Integer, Select, bindparam, insert, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from remote_dx.core.charset import storable
from remote_dx.core.clock import utcnow
from remote_dx.core.db import write_lock
from remote_dx.core.models import AuditChainHead, AuditRecord
from remote_dx.core.psycopg_statements import autocommitting

GENESIS_HASH = "0" * 64
HEAD_ID = 1

# PS3.15 A.5.1 / RFC 3881 EventOutcomeIndicator.
SUCCESS = 0
MINOR_FAILURE = 4  # the request was refused (bad input, not allowed, not found)
SERIOUS_FAILURE = 8  # the hub failed (5xx)
MAJOR_FAILURE = 12

# The fields the hash covers, in the order they appear in exports.
HASHED_FIELDS = (
    "seq",
    "recorded_at",
    "action",
    "outcome",
    "user_id",
    "username",
    "role",
    "institution",
    "patient",
    "object_type",
    "object_id",
    "client_address",
    "method",
    "path",
    "status_code",
    "detail",
)
EXPORT_FIELDS = (*HASHED_FIELDS, "prev_hash", "hash")


@dataclass
class AuditEvent:
    """What happened, before it gets its place in the chain."""

    action: str
    outcome: int = SUCCESS
    user_id: int | None = None
    username: str | None = None
    role: str | None = None
    institution: str | None = None
    patient: str | None = None
    object_type: str | None = None
    object_id: str | None = None
    client_address: str | None = None
    method: str | None = None
    path: str | None = None
    status_code: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)


def outcome_of(status_code: int) -> int:
    """The EventOutcomeIndicator of an HTTP answer."""
    if status_code < 400:
        return SUCCESS
    if status_code < 500:
        return MINOR_FAILURE
    return SERIOUS_FAILURE


def _timestamp(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _clip(value: str | None, length: int) -> str | None:
    """``value`` cut to its column's length and :func:`storable` (a ``%00`` in a path, say):
    one record PostgreSQL could not hold would fail its whole batch."""
    return None if value is None else storable(value)[:length]


def canonical(fields: Mapping[str, Any], prev_hash: str) -> bytes:
    """The bytes hashed for one record: sorted-key compact JSON (UTF-8) of its fields."""
    before_prev, between, after_seq = canonical_parts(fields)
    return f"{before_prev}{prev_hash}{between}{fields['seq']:d}{after_seq}".encode()


# The two values canonical_parts leaves open, as JSON: a string no hash is, and null.
_OPEN_PREV = '"prev_hash":"\\u0000"'
_OPEN_SEQ = '"seq":null'


def canonical_parts(fields: Mapping[str, Any]) -> tuple[str, str, str]:
    """A record's :func:`canonical` text around the two values only the chain's head decides:
    (before ``prev_hash``'s hex, between it and ``seq``'s digits, after them).

    Whoever holds the head fills them in: :func:`canonical` here, and PostgreSQL's
    ``audit_chain_append`` (migration 0010), so that the head's lock is held only inside the
    database. The two are written as placeholders and cut out of the JSON text at their last
    occurrences: keys are sorted, only ``detail`` (before both) nests objects that could spell
    them, and what follows them at the top level are strings, numbers and null, whose JSON
    cannot contain an unescaped quote.
    """
    body: dict[str, Any] = {}
    for name in HASHED_FIELDS:
        value = fields.get(name)
        body[name] = _timestamp(value) if isinstance(value, datetime) else value
    body["seq"] = None
    body["prev_hash"] = "\x00"
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    rest, _, after_seq = text.rpartition(_OPEN_SEQ)
    before_prev, _, between = rest.rpartition(_OPEN_PREV)
    return f'{before_prev}"prev_hash":"', f'"{between}"seq":', after_seq


def record_hash(fields: Mapping[str, Any], prev_hash: str) -> str:
    return hashlib.sha256(canonical(fields, prev_hash)).hexdigest()


def _fields(record: AuditRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in HASHED_FIELDS}


def _ensure_head(session: Session) -> None:
    """Create the head row where the schema was made without the migration (create_all)."""
    if session.get(AuditChainHead, HEAD_ID) is None:
        try:
            with session.begin_nested():
                session.add(AuditChainHead(id=HEAD_ID, last_seq=0, last_hash=GENESIS_HASH))
        except IntegrityError:
            pass  # another writer made it first


def append(sessions: sessionmaker[Session], event: AuditEvent) -> AuditRecord:
    """Write ``event`` as the next record of the chain and return it once committed.

    The appends waiting at the same moment in this process share one transaction (see
    :class:`_GroupAppender`): the chain is the same as with one transaction each.
    """
    return AuditRecord(**submit(sessions, event).result())


def submit(sessions: sessionmaker[Session], event: AuditEvent) -> Future[dict[str, Any]]:
    """:func:`append` without the wait: a future of the record's columns, done once it is
    committed (or failed with the error). A request on an event loop awaits it without holding
    a thread; the columns, not a mapped AuditRecord, as a request only needs to know it is in
    (a mapped object is 18.7 µs of the writer's time a record, ~1.5 % of a study view's)."""
    # Per process too: a forked child has the parent's dict but not its writer thread.
    key = (os.getpid(), sessions.kw["bind"].url.render_as_string(hide_password=False))
    with _appenders_guard:
        appender = _appenders.get(key)
        if appender is None:
            appender = _appenders[key] = _GroupAppender()
    return appender.submit(sessions, event)


def _row(event: AuditEvent, detail: dict[str, Any]) -> dict[str, Any]:
    """The record's columns from ``event``, clipped to their lengths."""
    return {
        "action": _clip(event.action, 32),
        "outcome": event.outcome,
        "user_id": event.user_id,
        "username": _clip(event.username, 200),
        "role": _clip(event.role, 32),
        "institution": _clip(event.institution, 64),
        "patient": _clip(event.patient, 140),
        "object_type": _clip(event.object_type, 32),
        "object_id": _clip(event.object_id, 200),
        "client_address": _clip(event.client_address, 64),
        "method": _clip(event.method, 8),
        "path": _clip(event.path, 500),
        "status_code": event.status_code,
        "detail": detail,
    }


class _GroupAppender:
    """Concurrent appends of one process share a transaction: one head lock, one commit.

    Each audited request waits for its record to be committed (the answer is not sent
    before), and on PostgreSQL the head's row lock is held until the commit's WAL flush; so
    under load writers queued one flush each behind the lock. Here one writer thread of the
    process's own takes every record waiting at that moment, in arrival order, links them as
    consecutive records and commits once; each submitter gets a future of its own record (or
    the error).

    A thread of its own rather than the first waiting request's: a request that led wrote
    batch after batch for the others while its own answer waited (the tail of a saturated
    closed loop), and a request that only waits need not hold a thread at all
    (:func:`submit`'s future can be awaited on an event loop).
    """

    # An idle writer ends after this long; the next record starts another.
    IDLE_SECONDS = 2.0
    # After a batch of more than one record (others are reading at the same time), the writer
    # lets this long pass before taking the next batch: a batch's call, commit and round trip
    # cost about as much as its records, and a lone reader's record, in a batch of one, goes
    # at once. Without it the one-call append (_append_batch_psycopg) took 1.6-1.7 records a
    # batch in a closed loop of 50 study views, at 0.37 ms of PostgreSQL CPU a view; with it
    # 2.9-3.2 and 0.30-0.34 ms (1, 2 and 4 ms were alike within the runs' noise).
    GATHER_SECONDS = 0.002

    def __init__(self) -> None:
        self._ready = threading.Condition()
        self._pending: list[tuple[AuditEvent, dict[str, Any], Future[dict[str, Any]]]] = []
        self._sessions: sessionmaker[Session] | None = None
        self._writer: threading.Thread | None = None

    def submit(self, sessions: sessionmaker[Session], event: AuditEvent) -> Future[dict[str, Any]]:
        detail = json.loads(json.dumps(event.detail or {}, default=str, ensure_ascii=False))
        record: Future[dict[str, Any]] = Future()
        with self._ready:
            self._pending.append((event, detail, record))
            self._sessions = sessions
            if self._writer is None or not self._writer.is_alive():
                self._writer = threading.Thread(
                    target=self._write, name="audit-chain-writer", daemon=True
                )
                self._writer.start()
            else:
                self._ready.notify()
        return record

    def _write(self) -> None:
        company = False
        while True:
            if company:
                time.sleep(self.GATHER_SECONDS)
            with self._ready:
                if not self._pending and not self._ready.wait_for(
                    lambda: self._pending, timeout=self.IDLE_SECONDS
                ):
                    if self._writer is threading.current_thread():
                        self._writer = None
                    return
                batch, self._pending = self._pending, []
                sessions = self._sessions
            assert sessions is not None
            company = len(batch) > 1
            try:
                records = _append_batch(sessions, [(e, d) for e, d, _ in batch])
            except BaseException as exc:
                for _, _, future in batch:
                    future.set_exception(exc)
            else:
                for (_, _, future), record in zip(batch, records, strict=True):
                    future.set_result(record)


_appenders: dict[tuple[int, str], _GroupAppender] = {}
_appenders_guard = threading.Lock()


# Built once, with bound parameters: an append is on every audited request.
_HEAD = AuditChainHead.__table__
_BUMP_HEAD = (
    update(_HEAD)
    .where(_HEAD.c.id == HEAD_ID)
    .values(last_seq=_HEAD.c.last_seq + bindparam("count", type_=Integer))
    .returning(_HEAD.c.last_seq, _HEAD.c.last_hash)
)
_SET_HEAD_HASH = update(_HEAD).where(_HEAD.c.id == HEAD_ID).values(last_hash=bindparam("last_hash"))
_INSERT_RECORDS = insert(AuditRecord.__table__)


_PG_APPEND = "SELECT * FROM audit_chain_append(%s::json)"


def _link(
    session: Session, batch: list[tuple[AuditEvent, dict[str, Any]]]
) -> list[dict[str, Any]] | None:
    """Add ``batch`` as the next links of the chain in ``session``'s transaction (not
    committed): their columns; None when the head row does not exist yet.

    Core statements on the tables, not the ORM's unit of work: an append is on every audited
    request, and flushing mapped objects cost more CPU than the three statements themselves.
    """
    row = session.execute(_BUMP_HEAD, {"count": len(batch)}).first()
    if row is None:
        return None
    rows = _chain_rows(batch, int(row[0]) - len(batch), str(row[1]))
    session.execute(_INSERT_RECORDS, rows)
    session.execute(_SET_HEAD_HASH, {"last_hash": rows[-1]["hash"]})
    return rows


def _chain_rows(
    batch: list[tuple[AuditEvent, dict[str, Any]]], seq: int, prev_hash: str
) -> list[dict[str, Any]]:
    """The columns of ``batch``'s records, linked after record ``seq`` of hash ``prev_hash``."""
    rows = []
    for event, detail in batch:
        seq += 1
        values = {"seq": seq, "recorded_at": utcnow(), **_row(event, detail)}
        values["prev_hash"] = prev_hash
        values["hash"] = prev_hash = record_hash(values, prev_hash)
        rows.append(values)
    return rows


def append_in(session: Session, event: AuditEvent) -> AuditRecord:
    """Write ``event`` as the next record of the chain inside the caller's open transaction.

    For changes made outside an HTTP request (the overdue sweeper's escalations): the record
    and the change commit or roll back together, so no change is left unaudited. The head's
    row lock is then held until the caller commits; keep that transaction short.
    """
    detail = json.loads(json.dumps(event.detail or {}, default=str, ensure_ascii=False))
    records = _link(session, [(event, detail)])
    if records is None:
        _ensure_head(session)
        records = _link(session, [(event, detail)])
        if records is None:
            raise RuntimeError("the audit chain head cannot be created")
    return AuditRecord(**records[0])


def _append_batch(
    sessions: sessionmaker[Session], batch: list[tuple[AuditEvent, dict[str, Any]]]
) -> list[dict[str, Any]]:
    """Link and commit ``batch``: the columns of its records."""
    engine = sessions.kw["bind"]
    if engine.dialect.driver == "psycopg":
        records = _append_batch_psycopg(engine, batch)
        if records is not None:
            return records
        # No head row yet (a schema made without the migration): the session path makes it.
    return _append_batch_session(sessions, batch)


def _append_batch_session(
    sessions: sessionmaker[Session], batch: list[tuple[AuditEvent, dict[str, Any]]]
) -> list[dict[str, Any]]:
    """:func:`_append_batch` through a session: any database, and the head row made if absent."""
    engine = sessions.kw["bind"]
    with write_lock(engine):
        for attempt in range(3):
            try:
                with sessions() as session:
                    records = _link(session, batch)
                    if records is None:
                        if attempt:
                            raise RuntimeError("the audit chain head cannot be created")
                        _ensure_head(session)
                        session.commit()
                        continue
                    session.commit()
                    return records
            except DBAPIError as exc:
                # A pooled connection the server closed (restart): nothing was written on it;
                # the pool has dropped it, so the retry gets a fresh one.
                if not exc.connection_invalidated or attempt:
                    raise
    raise AssertionError("unreachable")


def _append_batch_psycopg(
    engine: Engine, batch: list[tuple[AuditEvent, dict[str, Any]]]
) -> list[dict[str, Any]] | None:
    """:func:`_append_batch` on PostgreSQL: one call of the database's ``audit_chain_append``
    in autocommit, one round trip with the commit in it.

    The head's row lock is held from the bump to the commit's WAL flush, and every writer of
    every process queues on it. Bumped from here, it was also held across two round trips (the
    bump's, then the inserts' and the commit's) and across this process's wait for the GIL in
    between, as the hashes need the bumped head. Here each record's canonical JSON goes out in
    three parts (:func:`canonical_parts`) and the database links them under the lock: the same
    rows and hashes as :func:`_link`. None when the head row does not exist yet.

    An API process's CPU for the append of one record, alone in its batch / in batches of 4 /
    of 16: 191-242 / 74-75 / 37-44 µs, against 450-575 / 134-143 / 62 µs for the two round
    trips (one thread, the load cluster's PostgreSQL, session 12).

    A connection found dead is retried once on a fresh one: a pooled connection the server
    closed (a restart) never ran the call. A server that dies between the commit and its
    answer would leave the batch's records written twice, each a valid link of the chain.
    """
    recorded_at = utcnow()
    rows = [{"recorded_at": recorded_at, **_row(event, detail)} for event, detail in batch]
    sent = []
    for values in rows:
        before_prev, between, after_seq = canonical_parts(values)
        sent.append(
            {
                **values,
                "recorded_at": _timestamp(recorded_at),
                "before_prev": before_prev,
                "between_prev_and_seq": between,
                "after_seq": after_seq,
                "detail": json.dumps(values["detail"], ensure_ascii=False),
            }
        )
    records = json.dumps(sent, ensure_ascii=False)
    for attempt in range(2):
        pooled = engine.raw_connection()
        connection: psycopg.Connection[Any] = pooled.driver_connection  # type: ignore[assignment]
        try:
            # Given back as lent: the session path's bump must stay in its transaction.
            with autocommitting(connection), connection.cursor() as cursor:
                cursor.execute(_PG_APPEND, (records,), prepare=True)
                linked = cursor.fetchall()
        except psycopg.OperationalError:
            if connection.broken or connection.closed:
                pooled.invalidate()  # not back into the pool
                if not attempt:
                    continue
            raise
        finally:
            pooled.close()
        if not linked:
            return None
        for values, (seq, prev_hash, hash_) in zip(rows, linked, strict=True):
            values.update(seq=seq, prev_hash=prev_hash, hash=hash_)
        return rows
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class ChainCheck:
    """The result of :func:`verify_chain`; ``broken_seq`` is the first record that fails."""

    ok: bool
    records: int
    broken_seq: int | None = None
    reason: str | None = None


def verify_chain(session: Session, *, batch: int = 1000) -> ChainCheck:
    """Recompute every record's hash and link, in ``seq`` order; stop at the first break."""
    expected_seq = 1
    prev_hash = GENESIS_HASH
    count = 0
    statement = select(AuditRecord).order_by(AuditRecord.seq).execution_options(yield_per=batch)
    for record in session.scalars(statement):
        if record.seq != expected_seq:
            what = "missing" if record.seq > expected_seq else "duplicated or out of order"
            return ChainCheck(
                False, count, expected_seq, f"record {expected_seq} is {what} (found {record.seq})"
            )
        if record.prev_hash != prev_hash:
            return ChainCheck(
                False, count, record.seq, "its prev_hash is not the previous record's hash"
            )
        if record_hash(_fields(record), record.prev_hash) != record.hash:
            return ChainCheck(False, count, record.seq, "its content does not match its hash")
        prev_hash = record.hash
        expected_seq += 1
        count += 1
    head = session.get(AuditChainHead, HEAD_ID)
    last_seq = expected_seq - 1
    if head is not None and (head.last_seq != last_seq or head.last_hash != prev_hash):
        if head.last_seq > last_seq:
            return ChainCheck(
                False,
                count,
                last_seq + 1,
                f"the chain ends at {last_seq} but the head says {head.last_seq}: "
                "records were removed from the end",
            )
        return ChainCheck(False, count, head.last_seq, "the head does not match the last record")
    return ChainCheck(True, count)


@dataclass(frozen=True)
class AuditQuery:
    """Filters of an audit search; ``patient`` and ``user`` match exactly, times are UTC."""

    user: str | None = None
    patient: str | None = None
    action: str | None = None
    object_id: str | None = None
    outcome: int | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 100
    offset: int = 0


def search_statement(query: AuditQuery) -> Select[tuple[AuditRecord]]:
    statement = select(AuditRecord)
    if query.user:
        statement = statement.where(AuditRecord.username == query.user)
    if query.patient:
        statement = statement.where(AuditRecord.patient == query.patient)
    if query.action:
        statement = statement.where(AuditRecord.action == query.action)
    if query.object_id:
        statement = statement.where(AuditRecord.object_id == query.object_id)
    if query.outcome is not None:
        statement = statement.where(AuditRecord.outcome == query.outcome)
    if query.since is not None:
        statement = statement.where(AuditRecord.recorded_at >= query.since)
    if query.until is not None:
        statement = statement.where(AuditRecord.recorded_at < query.until)
    return statement


def search(session: Session, query: AuditQuery) -> list[AuditRecord]:
    statement = search_statement(query).order_by(AuditRecord.seq.desc())
    return list(session.scalars(statement.limit(query.limit).offset(query.offset)))


def as_row(record: AuditRecord) -> dict[str, Any]:
    row = {name: getattr(record, name) for name in EXPORT_FIELDS}
    row["recorded_at"] = _timestamp(record.recorded_at)
    return row


def iter_records(session: Session, query: AuditQuery | None = None) -> Iterator[AuditRecord]:
    """All records matching ``query`` (no paging) in chain order, streamed."""
    statement = search_statement(query or AuditQuery()).order_by(AuditRecord.seq)
    yield from session.scalars(statement.execution_options(yield_per=1000))


def write_csv(records: Iterable[AuditRecord], out: TextIO) -> int:
    writer = csv.DictWriter(out, fieldnames=EXPORT_FIELDS, lineterminator="\r\n")
    writer.writeheader()
    count = 0
    for record in records:
        row = as_row(record)
        row["detail"] = json.dumps(row["detail"], ensure_ascii=False, sort_keys=True)
        writer.writerow(row)
        count += 1
    return count


def write_jsonl(records: Iterable[AuditRecord], out: TextIO) -> int:
    """One JSON object per line, with both hashes, so a copy can be verified elsewhere."""
    count = 0
    for record in records:
        out.write(json.dumps(as_row(record), ensure_ascii=False, sort_keys=True) + "\n")
        count += 1
    return count


def csv_text(records: Iterable[AuditRecord]) -> str:
    buffer = io.StringIO()
    write_csv(records, buffer)
    return buffer.getvalue()
