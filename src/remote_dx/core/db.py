"""Database engine and sessions (SQLite embedded, PostgreSQL scale-out).

SQLite is put in WAL mode with a busy timeout because the DICOM receiver commits from many
association threads at once; ``synchronous=FULL`` keeps the "acknowledged only after commit"
promise across a power cut, not just a process crash.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import threading
import weakref
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from remote_dx.core.settings import Settings, get_settings

_engines: dict[str, Engine] = {}
_sessionmakers: dict[str, sessionmaker[Session]] = {}


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            pool_size=20,
            max_overflow=20,
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # A server's connections are shared by every process of the hub (API processes, workers,
    # receivers): 10 + 10 per process; an API process adds its audit engine's 2 + 2 and its hot
    # reads' 4 (28 at most), so two API processes and two other processes stay under
    # PostgreSQL's default max_connections=100 even when every pool overflows (raise it for
    # more). More would not read faster: a request holds its connection for a few queries, and
    # requests beyond the pool wait for one (pool_timeout 30 s) instead of adding server
    # backends that compete for the same CPUs.
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)


def get_engine(settings: Settings | None = None) -> Engine:
    url = (settings or get_settings()).resolved_database_url
    if url not in _engines:
        _engines[url] = make_engine(url)
    return _engines[url]


def get_sessionmaker(settings: Settings | None = None) -> sessionmaker[Session]:
    url = (settings or get_settings()).resolved_database_url
    if url not in _sessionmakers:
        _sessionmakers[url] = sessionmaker(get_engine(settings), expire_on_commit=False)
    return _sessionmakers[url]


def own_sessionmaker(
    url: str, purpose: str, *, pool_size: int, max_overflow: int
) -> sessionmaker[Session]:
    """Sessions on an engine of ``purpose``'s own, so that its connections neither wait for nor
    count against the requests' pool; on a server database without the pool's pre-ping (a
    round trip on every checkout: the caller handles a dead connection itself). One engine and
    one sessionmaker per URL and purpose (a sessionmaker makes a Session subclass of its own,
    whose event dispatch SQLAlchemy builds on first use); :func:`dispose_engines` closes it."""
    key = f"{url}#{purpose}"
    with _own_guard:
        made = _sessionmakers.get(key)
        if made is None:
            if url.startswith("sqlite"):
                engine = make_engine(url)
            else:
                engine = create_engine(url, pool_size=pool_size, max_overflow=max_overflow)
            _engines[key] = engine
            made = _sessionmakers[key] = sessionmaker(engine, expire_on_commit=False)
    return made


_own_guard = threading.Lock()


def get_hot_read_sessionmaker(settings: Settings, connections: int) -> sessionmaker[Session]:
    """Sessions for the API's hot reads (a worklist page, a study view) on a server database:
    an engine of their own (:func:`own_sessionmaker`), ``connections`` at most.

    The pre-ping is a ``SELECT 1`` round trip on every checkout, a quarter of a study view's
    round trips; a hot read is read-only, so its caller runs it once more instead when it finds
    a pooled connection dead (:func:`remote_dx.api.deps.run_hot`). On SQLite (no server to
    restart, no pre-ping) the usual sessions.
    """
    url = settings.resolved_database_url
    if url.startswith("sqlite"):
        return get_sessionmaker(settings)
    return own_sessionmaker(url, "hot-reads", pool_size=connections, max_overflow=0)


@contextmanager
def session_scope(settings: Settings | None = None) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    session = get_sessionmaker(settings)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def dispose_engines() -> None:
    for engine in _engines.values():
        engine.dispose()
    _engines.clear()
    _sessionmakers.clear()


# -- one writer at a time on SQLite ----------------------------------------------------------
#
# SQLite lets one transaction write at a time; the others wait in its busy handler, which sleeps
# in growing steps (1, 2, 5, 10 … 100 ms) and so leaves the database idle while writers queue.
# Ingest's write transactions take this lock instead: a thread lock inside the process and an
# flock() on a file beside the database across receiver processes; both wake the next writer the
# moment the lock is released. Other writers (API, worker) still meet the busy timeout as before.


class _SqliteWriteLock:
    def __init__(self, path: str) -> None:
        self._thread_lock = threading.Lock()
        self._path = path + ".write-lock"
        self._fd: int | None = None

    def __enter__(self) -> None:
        self._thread_lock.acquire()
        try:
            if self._fd is None:
                self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except OSError:
            # No lock file (read-only directory, odd file system): SQLite's own locking and
            # busy timeout still keep writes correct, only slower under contention.
            pass
        except BaseException:
            self._thread_lock.release()
            raise

    def __exit__(self, *exc_info: object) -> None:
        try:
            if self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()


_write_locks: dict[str, _SqliteWriteLock] = {}
_write_locks_guard = threading.Lock()


def write_lock(engine: Engine) -> AbstractContextManager[None]:
    """Hold while writing a short transaction: serialises SQLite writers, a no-op elsewhere."""
    path = sqlite_file(engine)
    if path is None:
        return nullcontext()
    with _write_locks_guard:
        lock = _write_locks.get(path)
        if lock is None:
            lock = _write_locks[path] = _SqliteWriteLock(path)
    return lock


# -- group commit for ingest on SQLite -------------------------------------------------------
#
# With synchronous=FULL every commit fsyncs the WAL while holding SQLite's write lock, so
# parallel associations queue behind one device flush each (0.5–3 ms on this VM). Ingest's
# transactions instead commit with synchronous=NORMAL (frames written, not flushed; the lock is
# released at once) and then call :func:`make_durable`, which fsyncs the WAL file before the
# C-STORE is answered. A transaction is durable once its commit frame is on disk, whoever
# flushed it; so concurrent callers share one fsync that started after their commit. Checkpoints
# in NORMAL mode sync the WAL before copying and the database file after, and the WAL header on
# reuse, so a commit whose frames a checkpoint moved is durable too. Other users of the same
# connections keep synchronous=FULL (the pragma is set back after each ingest transaction).

_SYNC_NORMAL = "PRAGMA synchronous=NORMAL"
_SYNC_FULL = "PRAGMA synchronous=FULL"


class _SharedFlushes:
    """Flush numbers shared by every process that uses one database (receiver processes).

    A file beside the database holds two counters, mapped into each process: flushes started
    and flushes completed. A flush is started and run under an ``flock`` on that file, so one
    process flushes at a time, and a process whose commit came before a flush that another
    process started sees it complete instead of flushing again: the group commit of
    :class:`_WalSync`, across processes.
    """

    _SIZE = 16  # two native 8-byte counters; aligned, so each is read and written whole

    def __init__(self, database: str) -> None:
        self._fd = os.open(database + "-wal-flushes", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            if os.fstat(self._fd).st_size < self._SIZE:
                os.ftruncate(self._fd, self._SIZE)
            self._map = mmap.mmap(self._fd, self._SIZE)
        except BaseException:
            os.close(self._fd)
            raise
        self._counters = memoryview(self._map).cast("Q")  # [0] started, [1] completed

    def flush(self, wal: str) -> None:
        # Read before waiting: any flush numbered above this starts after the caller's commit.
        target = self._counters[0] + 1
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            if self._counters[1] >= target:
                return
            mine = self._counters[0] = self._counters[0] + 1
            _fdatasync(wal)
            self._counters[1] = mine
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)


def _fdatasync(path: str) -> None:
    # fdatasync, as SQLite itself syncs its WAL on Linux: once the WAL has reached its working
    # size after a checkpoint, commits overwrite blocks it already has, and no file system
    # journal commit (for the file's times) rides on each flush.
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fdatasync(fd)
    finally:
        os.close(fd)


class _WalSync:
    """fsync of one database's WAL file, shared by callers that committed before it started:
    threads of this process here, other processes through :class:`_SharedFlushes`."""

    def __init__(self, database: str) -> None:
        self._path = database + "-wal"
        self._cond = threading.Condition()
        self._started = 0
        self._completed = 0
        self._running = False
        try:
            self._shared: _SharedFlushes | None = _SharedFlushes(database)
        except OSError:  # read-only directory, odd file system: each process flushes alone
            self._shared = None

    def sync(self) -> None:
        with self._cond:
            target = self._started + 1  # a flush that starts after our commit
            while self._completed < target:
                if not self._running:
                    self._running = True
                    self._started += 1
                    mine = self._started
                    break
                self._cond.wait()
            else:
                return
        ok = False
        try:
            if self._shared is not None:
                self._shared.flush(self._path)
            else:
                _fdatasync(self._path)
            ok = True
        finally:
            with self._cond:
                self._running = False
                if ok:
                    self._completed = max(self._completed, mine)
                self._cond.notify_all()


_wal_syncs: dict[str, _WalSync] = {}


def sqlite_file(engine: Engine) -> str | None:
    """The absolute path of the engine's SQLite database file; None for any other database.

    Asked several times per received instance; an engine's URL never changes, so the answer
    is kept with the engine (resolved once, as the engine's first connection resolved it).
    """
    try:
        return _sqlite_files[engine]
    except KeyError:
        pass
    url = engine.url
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        path = None
    else:
        path = os.path.abspath(url.database)
    _sqlite_files[engine] = path
    return path


_sqlite_files: weakref.WeakKeyDictionary[Engine, str | None] = weakref.WeakKeyDictionary()


_FLAG = "rdx_synchronous_normal"


def _restore_full(dbapi_connection: Any, record: Any) -> None:
    """Pool check-in: a connection lent to ingest goes back to synchronous=FULL."""
    if record.info.pop(_FLAG, False):
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(_SYNC_FULL)
        finally:
            cursor.close()


def deferred_flush(connection: Any) -> bool:
    """Before an ingest write on ``connection``: let its commit skip the flush (SQLite WAL).

    Returns True when the caller must call :func:`make_durable` after committing; the
    connection returns to synchronous=FULL when it goes back to the pool.
    """
    engine = connection.engine
    if connection.dialect.name != "sqlite" or sqlite_file(engine) is None:
        return False
    if connection.exec_driver_sql("PRAGMA journal_mode").scalar() != "wal":
        return False
    with _write_locks_guard:
        if not event.contains(engine, "checkin", _restore_full):
            event.listen(engine, "checkin", _restore_full)
    connection.connection.info[_FLAG] = True
    connection.exec_driver_sql(_SYNC_NORMAL)
    return True


def make_durable(engine: Engine) -> None:
    """After an ingest commit with a deferred flush: fsync the WAL (shared with others)."""
    path = sqlite_file(engine)
    assert path is not None
    with _write_locks_guard:
        syncer = _wal_syncs.get(path)
        if syncer is None:
            syncer = _wal_syncs[path] = _WalSync(path)
    syncer.sync()


_WAL = "rdx_journal_is_wal"


def deferred_flush_raw(engine: Engine, connection: Any) -> bool:
    """:func:`deferred_flush` for a pooled DB-API connection (``engine.raw_connection()``).

    Ingest on SQLite talks to sqlite3 directly (SQLAlchemy's execution machinery cost ~0.1 ms
    per statement, a sixth of the receiver's CPU per ECG). The journal mode is asked once per
    connection: WAL is a property of the database file and stays once set.
    """
    if sqlite_file(engine) is None:
        return False
    info = connection.info
    wal = info.get(_WAL)
    if wal is None:
        cursor = connection.cursor()
        try:
            row = cursor.execute("PRAGMA journal_mode").fetchone()
        finally:
            cursor.close()
        wal = info[_WAL] = bool(row) and str(row[0]).lower() == "wal"
    if not wal:
        return False
    with _write_locks_guard:
        if not event.contains(engine, "checkin", _restore_full):
            event.listen(engine, "checkin", _restore_full)
    if not info.get(_FLAG):
        cursor = connection.cursor()
        try:
            cursor.execute(_SYNC_NORMAL)
        finally:
            cursor.close()
        info[_FLAG] = True
    return True


# -- planner statistics on SQLite ------------------------------------------------------------
#
# SQLite plans without statistics until ANALYZE has run, and nothing runs it on its own (the
# self-maintaining ``PRAGMA optimize=0x10002`` needs SQLite 3.46; Debian 12 ships 3.40). Without
# them a reader's scoped QIDO search by Accession Number walked every worklist item of the
# reader's pool instead of using the accession index (10,000 studies: 5.8 → 2.8 ms after ANALYZE;
# by Patient ID 8.3 → 1.3 ms). PostgreSQL's autovacuum keeps its own statistics.

_analyzed: dict[str, int] = {}
_analyzed_guard = threading.Lock()


def refresh_planner_statistics(engine: Engine, *, growth: float = 0.25) -> bool:
    """Run ``ANALYZE`` on a SQLite database whose studies grew by ``growth`` (or by 100) since
    this process last did, or that has never been analysed; ``True`` when it ran.

    Called by the periodic sweep: on a county hub's volumes (~60 studies a day) it runs a few
    times a year once the hub is full; a bulk load or a restore is analysed on the next sweep.
    """
    path = sqlite_file(engine)
    if path is None:
        return False
    with engine.connect() as conn:
        studies = int(conn.exec_driver_sql("SELECT coalesce(max(id), 0) FROM studies").scalar())
        has_stats = conn.exec_driver_sql(
            "SELECT count(*) FROM sqlite_master WHERE name = 'sqlite_stat1'"
        ).scalar()
    with _analyzed_guard:
        last = _analyzed.get(path)
    if has_stats and last is not None and studies < last * (1 + growth) + 100:
        return False
    with write_lock(engine), engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE")
        conn.commit()
    with _analyzed_guard:
        _analyzed[path] = studies
    return True
