"""Filing one received instance: parse → object store → index, in that order.

This is the single door every way in (C-STORE, STOW-RS, ECG upload) goes through, so the
"nothing lost" invariant lives in one place: the caller may acknowledge the instance only when
:func:`file_instance` returns, by which time the bytes are durable in the object store and the
index row is committed. Re-sending the same SOP Instance UID is a no-op that succeeds.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import sqlite3
import struct
import threading
import weakref
import zlib
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException, InvalidDicomError
from sqlalchemy import (
    BigInteger,
    Engine,
    Integer,
    SmallInteger,
    String,
    Table,
    bindparam,
    func,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from remote_dx.core.clock import utcnow
from remote_dx.core.db import (
    deferred_flush,
    deferred_flush_raw,
    make_durable,
    sqlite_file,
    write_lock,
)
from remote_dx.core.errors import DatabaseUnavailable, InvalidInstance
from remote_dx.core.models import (
    Device,
    Instance,
    Patient,
    Series,
    Study,
    StudyStatus,
)
from remote_dx.ingest.header import (
    InstanceHeader,
    check_pixel_data,
    check_required_uids,
    read_header,
)
from remote_dx.ingest.part10 import check_structure
from remote_dx.storage.base import ObjectStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sender:
    """Who sent an instance: the registered device and the institution it belongs to.

    ``device_id`` is None for an HTTP upload by a technician (no device named): the technician's
    institution is the origin.
    """

    device_id: int | None
    institution_id: int
    institution_code: str
    ae_title: str

    @classmethod
    def of(cls, device: Device) -> Sender:
        return cls(device.id, device.institution_id, device.institution.code, device.ae_title)


@dataclass(frozen=True)
class FiledInstance:
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    object_key: str
    duplicate: bool


def object_key(study_uid: str, series_uid: str, sop_instance_uid: str) -> str:
    return f"dicom/{study_uid}/{series_uid}/{sop_instance_uid}.dcm"


def parse_part10(data: bytes) -> Dataset:
    """Parse a DICOM Part 10 file (PS3.10 §7.1) and check it is a whole, usable instance.

    pydicom accepts a file cut short without complaint, so the byte stream's structure is
    walked first (:func:`~remote_dx.ingest.part10.check_structure`: every element, sequence item
    and Pixel Data fragment must lie wholly inside the data) and native pixel data is checked
    against the image's own geometry. Top-level values are decoded once so a malformed one is
    found here; nested values are left to their readers (decoding all of them cost ~25 ms per
    12-lead ECG, more than the rest of filing).
    """
    return _read_checked(data, pixels=True)


def _read_checked(data: bytes, *, pixels: bool) -> Dataset:
    """:func:`parse_part10`; with ``pixels=False`` the Pixel Data value is checked but not read.

    Filing needs only the header: reading and copying the pixel values cost ~1 ms of the ~1.7 ms
    a CT slice took to parse. The checks are the same either way: the pixel data's length and
    first bytes come from the structural walk.
    """
    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=not pixels)
        transfer_syntax = ds.file_meta.get("TransferSyntaxUID")
        if not transfer_syntax:
            raise InvalidInstance("no Transfer Syntax UID in the file meta information")
        pixel = check_structure(data, str(transfer_syntax))
        check_required_uids(ds)
        values = {element.keyword: element.value for element in ds}  # every value decoded once
    except InvalidInstance:
        raise
    except (
        InvalidDicomError,
        BytesLengthException,
        EOFError,
        ValueError,
        TypeError,
        KeyError,
        OSError,
        NotImplementedError,
        AttributeError,
        IndexError,
        struct.error,
        zlib.error,
    ) as exc:
        raise InvalidInstance(f"not a readable DICOM instance: {exc}") from exc
    check_pixel_data(values, str(transfer_syntax), pixel)
    return ds


def file_instance(
    data: bytes,
    *,
    store: ObjectStore,
    sessions: sessionmaker[Session],
    sender: Sender,
) -> FiledInstance:
    """Store and index one Part 10 instance; return only when both are durable.

    Order: parse; one indexed read for a duplicate (then nothing is written); the object, durably;
    then one write transaction (patient, study, series, instance, study counters) committed
    before returning. Raises InvalidInstance (reject, don't retry), StorageUnavailable or
    DatabaseUnavailable (retry later).
    """
    header = read_header(data)
    study_uid = header.uid("StudyInstanceUID")
    series_uid = header.uid("SeriesInstanceUID")
    sop_uid = header.uid("SOPInstanceUID")
    key = object_key(study_uid, series_uid, sop_uid)

    # A sessionmaker bound to an engine names it: no ORM session is made (~40 µs) just to
    # learn which database this is.
    engine = _sqlite_engine(getattr(sessions, "kw", {}).get("bind"))
    if engine is not None:
        return _file_on_sqlite(engine, header, data, key, store, sender)
    with sessions() as session:
        engine = _sqlite_engine(session.get_bind())
        if engine is not None:
            return _file_on_sqlite(engine, header, data, key, store, sender)
        try:
            if session.connection().execute(_SELECT_INSTANCE, {"uid": sop_uid}).first():
                return FiledInstance(study_uid, series_uid, sop_uid, key, duplicate=True)
        except SQLAlchemyError as exc:
            raise DatabaseUnavailable(str(exc)) from exc

        # The object is written in a helper thread while this one hashes the bytes and (on
        # PostgreSQL) sends the index rows; the transaction commits only once the object is
        # durable, and rolls back if it could not be stored.
        pending = _io_pool().submit(store.put, key, data, content_type="application/dicom")
        try:
            row = _InstanceRow.of(header, key, len(data), _sha256(data), sender)
        except BaseException:
            pending.result()
            raise

        # Same session: on SQLite the probe opened no transaction (pysqlite begins one at the
        # first write); on PostgreSQL the probe and the writes share one BEGIN … COMMIT.
        for attempt in range(5):
            try:
                duplicate = _index(session, row, pending.result)
                return FiledInstance(study_uid, series_uid, sop_uid, key, duplicate=duplicate)
            except SeriesOfAnotherStudy:
                session.rollback()
                _forget_object(store, key)
                raise
            except IntegrityError:
                # Another association created the same patient/study/series row first, or a
                # cached row id went stale: forget the cached ids and try again.
                session.rollback()
                _ids_for(session).clear()
                if attempt == 4:
                    raise
            except SQLAlchemyError as exc:
                raise DatabaseUnavailable(str(exc)) from exc
    raise AssertionError("unreachable")


def _sqlite_engine(bind: Any) -> Engine | None:
    """The engine behind ``bind`` (an engine or a connection) if it is an SQLite file."""
    engine = getattr(bind, "engine", bind)
    return engine if isinstance(engine, Engine) and sqlite_file(engine) is not None else None


def _file_on_sqlite(
    engine: Engine,
    header: InstanceHeader,
    data: bytes,
    key: str,
    store: ObjectStore,
    sender: Sender,
) -> FiledInstance:
    """:func:`file_instance` on an SQLite file: the same steps and promises, on sqlite3 itself.

    SQLAlchemy's execution path (statement cache lookup, parameter processing, result
    wrapping, session and transaction bookkeeping) cost ~0.6 ms per instance, more than the
    statements themselves; here the statements are SQL text made once from the tables
    (:class:`_SqliteInsert`: the same columns, Python-side defaults and type conversions
    SQLAlchemy applies), run on the pooled DB-API connection. Errors map as before: a lost or
    locked database is DatabaseUnavailable; a row created by another association meanwhile
    means forget the cached row ids and try again.
    """
    study_uid = header.uid("StudyInstanceUID")
    series_uid = header.uid("SeriesInstanceUID")
    sop_uid = header.uid("SOPInstanceUID")
    try:
        connection = engine.raw_connection()
    except (SQLAlchemyError, sqlite3.Error) as exc:  # the pool does not wrap connect errors
        raise DatabaseUnavailable(str(exc)) from exc
    try:
        cursor = connection.cursor()
        try:
            found = cursor.execute(_SQL_SELECT_INSTANCE_OBJECT, (sop_uid,)).fetchone()
        except sqlite3.Error as exc:
            raise DatabaseUnavailable(str(exc)) from exc
        if found is not None:
            _ensure_durable_duplicate(engine, connection, cursor, found, data, key, store)
            return FiledInstance(study_uid, series_uid, sop_uid, key, duplicate=True)
        ids = _engine_ids(engine)
        stage = getattr(store, "stage", None)
        staged: Any = None
        if stage is not None:
            # The object is written and renamed into place now but flushed in a helper thread
            # while this one commits the row and flushes the WAL: the two device flushes run
            # concurrently instead of one after the other. The answer still waits for both.
            # A crash in between can leave the row without a durable object; the modality got
            # no answer and re-sends, and the duplicate path above checks the object's bytes
            # against the row and stores it again (bench/README.md, "Durability").
            staged = stage(key, data)
            pending = _io_pool().submit(staged.flush)
        else:
            pending = _io_pool().submit(store.put, key, data, content_type="application/dicom")
        try:
            # Hashed while the object is written or flushed (both release the GIL).
            row = _InstanceRow.of(header, key, len(data), _sha256(data), sender)
            if staged is None:
                # SQLite has one writer at a time: wait for the object before taking the write
                # lock, so no writer waits on another's disk flush.
                pending.result()
            for attempt in range(5):
                try:
                    flush_after = deferred_flush_raw(engine, connection)
                    duplicate = _index_sqlite(engine, connection, cursor, row, ids)
                    break
                except SeriesOfAnotherStudy:
                    connection.rollback()
                    if staged is not None:
                        _wait_quietly(pending)
                        staged.discard()  # the refused object must not stay under its key
                    else:
                        _forget_object(store, key)
                    raise
                except sqlite3.IntegrityError as exc:
                    connection.rollback()
                    ids.clear()
                    if attempt == 4:
                        raise DatabaseUnavailable(str(exc)) from exc
                except sqlite3.Error as exc:
                    with contextlib.suppress(sqlite3.Error):
                        connection.rollback()
                    raise DatabaseUnavailable(str(exc)) from exc
            if flush_after:
                try:
                    make_durable(engine)  # outside the write lock: commits share one flush
                except OSError as exc:
                    raise DatabaseUnavailable(f"cannot flush the index: {exc}") from exc
        except BaseException:
            if staged is not None:
                _wait_quietly(pending)  # never answer while the object is still being flushed
            raise
        if staged is not None:
            # A flush failure is StorageUnavailable (0xA700) and the staged file is gone; the
            # row stays, and the re-send finds no object and stores it again.
            pending.result()
        return FiledInstance(study_uid, series_uid, sop_uid, key, duplicate=duplicate)
    finally:
        connection.close()  # back to the pool (which sets synchronous=FULL again)


def _wait_quietly(pending: Any) -> None:
    with contextlib.suppress(Exception):
        pending.result()


def _ensure_durable_duplicate(
    engine: Engine,
    connection: Any,
    cursor: Any,
    found: tuple[Any, ...],
    data: bytes,
    key: str,
    store: ObjectStore,
) -> None:
    """A re-sent instance whose row exists: answer "stored" only if it truly is.

    With the object flushed beside the index (see :func:`_file_on_sqlite`), the row can be on
    disk while the object is not (a crash or a failed flush before the first answer), or the
    first attempt can still be flushing in another association. The object's bytes are checked
    against the row and made durable; if they are missing or wrong, the received copy is stored
    again (durably) and the row and study updated so the study is processed again. The row
    itself is flushed (WAL) before answering, as for a new instance.
    """
    instance_pk, stored_key, sha256, size, series_pk = found
    verify = getattr(store, "verify_durable", None)
    if verify is not None and not verify(stored_key, sha256, size):
        log.warning("re-sent instance %s: its stored object was missing or damaged; repaired", key)
        store.put(stored_key, data, content_type="application/dicom")
        now = utcnow()
        bind_time = _studies.c.last_received_at.type.bind_processor(engine.dialect)
        stamp = bind_time(now) if bind_time else now
        try:
            deferred_flush_raw(engine, connection)
            with write_lock(engine):
                cursor.execute(_SQL_REPAIR_INSTANCE, (_sha256(data), len(data), instance_pk))
                cursor.execute(_SQL_REOPEN_STUDY, (stamp, _RECEIVING, series_pk))
                connection.commit()
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                connection.rollback()
            raise DatabaseUnavailable(str(exc)) from exc
    if deferred_flush_raw(engine, connection):
        try:
            make_durable(engine)
        except OSError as exc:
            raise DatabaseUnavailable(f"cannot flush the index: {exc}") from exc


def _index_sqlite(
    engine: Engine, connection: Any, cursor: Any, row: _InstanceRow, ids: _RowIds
) -> bool:
    """:func:`_index` on a DB-API connection to SQLite; the object is already durable."""
    inserts = _sqlite_inserts(engine, row)
    now = utcnow()
    with write_lock(engine):
        study_pk = ids.get(ids.studies, row.study_uid)
        if study_pk is None:
            study_pk = _scalar(cursor.execute(_SQL_SELECT_STUDY, (row.study_uid,)))
        if study_pk is None:
            patient_pk = _scalar(cursor.execute(*inserts.patient.bind(row.patient)))
            values = {**row.study, "patient_pk": patient_pk}
            values.update(received_at=now, last_received_at=now)
            study_pk = _scalar(cursor.execute(*inserts.study.bind(values)))
            if study_pk is None:  # created by another association since the SELECT
                study_pk = _scalar(cursor.execute(_SQL_SELECT_STUDY, (row.study_uid,)))
        series_pk = ids.get(ids.series, row.series_key)
        if series_pk is None:
            values = {**row.series, "study_pk": study_pk}
            series_pk = _scalar(cursor.execute(*inserts.series.bind(values)))
            if series_pk is None:
                found = cursor.execute(_SQL_SELECT_SERIES, (row.series_uid,)).fetchone()
                series_pk = _series_of_study(row, study_pk, *found)
        values = {**row.instance, "series_pk": series_pk, "received_at": now}
        instance_pk = _scalar(cursor.execute(*inserts.instance.bind(values)))
        if instance_pk is not None:
            cursor.execute(_SQL_TOUCH_STUDY, (inserts.bind_time(now), _RECEIVING, study_pk))
        connection.commit()
    ids.put(ids.studies, row.study_uid, study_pk)
    ids.put(ids.series, row.series_key, series_pk)
    return instance_pk is None


def _scalar(cursor: Any) -> Any:
    found = cursor.fetchone()
    cursor.fetchall()  # a RETURNING statement is complete only once its rows are read
    return None if found is None else found[0]


_SQL_SELECT_INSTANCE = "SELECT id FROM instances WHERE sop_instance_uid = ?"
_SQL_SELECT_INSTANCE_OBJECT = (
    "SELECT id, object_key, sha256, size_bytes, series_pk FROM instances WHERE sop_instance_uid = ?"
)
# The object is whole again: clear fsck's "missing" mark too.
_SQL_REPAIR_INSTANCE = (
    "UPDATE instances SET sha256 = ?, size_bytes = ?, missing_at = NULL WHERE id = ?"
)
# A repaired object re-opens its study like a new instance (processed again after the quiet
# period, with the whole object this time); the instance count is unchanged.
_SQL_REOPEN_STUDY = (
    "UPDATE studies SET revision = revision + 1, last_received_at = ?, status = ? "
    "WHERE id = (SELECT study_pk FROM series WHERE id = ?)"
)
_SQL_SELECT_STUDY = "SELECT id FROM studies WHERE study_uid = ?"
_SQL_SELECT_SERIES = "SELECT id, study_pk FROM series WHERE series_uid = ?"
# As _TOUCH_STUDY: SQL-side increments, so concurrent associations never lose a count.
_SQL_TOUCH_STUDY = (
    "UPDATE studies SET num_instances = num_instances + 1, revision = revision + 1, "
    "last_received_at = ?, status = ? WHERE id = ?"
)
_RECEIVING = StudyStatus.RECEIVING.value


class _SqliteInsert:
    """``INSERT … ON CONFLICT … RETURNING id`` for one table and one set of given columns.

    Columns not given but with a Python-side default (``default=`` in the model) get it, and
    every value goes through its column type's bind processor for SQLite: the row is what
    SQLAlchemy's own insert of the same values would write.
    """

    def __init__(self, table: Any, keys: tuple[str, ...], conflict: str, dialect: Any) -> None:
        quote = dialect.identifier_preparer.quote
        given = set(keys)
        self.defaults = [
            (column.key, column.default)
            for column in table.columns
            if column.key not in given and column.default is not None and not column.primary_key
        ]
        names = [*keys, *(name for name, _ in self.defaults)]
        self.keys = keys
        self.processors = [table.c[name].type.bind_processor(dialect) for name in names]
        self.sql = (
            f"INSERT INTO {quote(table.name)} ({', '.join(quote(name) for name in names)}) "
            f"VALUES ({', '.join('?' * len(names))}) {conflict} RETURNING id"
        )

    def bind(self, values: dict[str, Any]) -> tuple[str, list[Any]]:
        params = [values[key] for key in self.keys]
        for _name, default in self.defaults:
            params.append(default.arg(None) if default.is_callable else default.arg)
        return self.sql, [
            value if process is None or value is None else process(value)
            for process, value in zip(self.processors, params, strict=True)
        ]


@dataclass
class _SqliteInserts:
    patient: _SqliteInsert
    study: _SqliteInsert
    series: _SqliteInsert
    instance: _SqliteInsert
    bind_time: Callable[[Any], Any]


_sqlite_insert_cache: dict[tuple[Any, ...], _SqliteInserts] = {}


def _sqlite_inserts(engine: Engine, row: _InstanceRow) -> _SqliteInserts:
    key = (
        tuple(row.patient),
        tuple(row.study),
        tuple(row.series),
        tuple(row.instance),
    )
    inserts = _sqlite_insert_cache.get(key)
    if inserts is None:
        dialect = engine.dialect
        names = ("name", "birth_date", "sex")
        patient_conflict = "ON CONFLICT (issuer, patient_id) DO UPDATE SET " + ", ".join(
            # Demographics from the newest study win; an empty value keeps the stored one.
            f"{name} = coalesce(excluded.{name}, patients.{name})"
            for name in names
        )
        time_type = _studies.c.last_received_at.type
        inserts = _SqliteInserts(
            patient=_SqliteInsert(_patients, tuple(row.patient), patient_conflict, dialect),
            study=_SqliteInsert(
                _studies,
                (*row.study, "patient_pk", "received_at", "last_received_at"),
                "ON CONFLICT (study_uid) DO NOTHING",
                dialect,
            ),
            series=_SqliteInsert(
                _series, (*row.series, "study_pk"), "ON CONFLICT (series_uid) DO NOTHING", dialect
            ),
            instance=_SqliteInsert(
                _instances,
                (*row.instance, "series_pk", "received_at"),
                "ON CONFLICT (sop_instance_uid) DO NOTHING",
                dialect,
            ),
            bind_time=time_type.bind_processor(dialect) or (lambda value: value),
        )
        _sqlite_insert_cache[key] = inserts
    return inserts


_io_executor: ThreadPoolExecutor | None = None
_io_executor_lock = threading.Lock()


def _io_pool() -> ThreadPoolExecutor:
    global _io_executor
    with _io_executor_lock:
        if _io_executor is None:
            # One write in flight per association at most; 32 is the receiver's default limit.
            _io_executor = ThreadPoolExecutor(max_workers=32, thread_name_prefix="object-put")
        return _io_executor


def start_io_pool(threads: int = 4) -> None:
    """Start the object writers' first threads now (the pool starts them one per submit)."""
    pool = _io_pool()
    barrier = threading.Barrier(threads + 1)
    waits = [pool.submit(barrier.wait, 5.0) for _ in range(threads)]
    with contextlib.suppress(threading.BrokenBarrierError):
        barrier.wait(5.0)
    for wait in waits:
        with contextlib.suppress(threading.BrokenBarrierError):
            wait.result()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class _InstanceRow:
    """Everything the index needs from one instance, read out of the data set once."""

    study_uid: str
    series_uid: str
    sop_uid: str
    patient: dict[str, Any]
    study: dict[str, Any]
    series: dict[str, Any]
    instance: dict[str, Any]

    @property
    def series_key(self) -> str:
        # Row ids are remembered per (study, series): a cached series id is one already checked
        # to belong to this study, so the check costs nothing on the common path.
        return f"{self.study_uid}\\{self.series_uid}"

    @classmethod
    def of(
        cls, header: InstanceHeader, key: str, size: int, sha256: str, sender: Sender
    ) -> _InstanceRow:
        values, texts = header.values, header.texts
        get = values.get
        study_uid = str(values["StudyInstanceUID"])
        series_uid = str(values["SeriesInstanceUID"])
        sop_uid = str(values["SOPInstanceUID"])
        return cls(
            study_uid,
            series_uid,
            sop_uid,
            patient=_fitted(
                _patients,
                {
                    "issuer": str(get("IssuerOfPatientID") or "") or sender.institution_code,
                    "patient_id": str(get("PatientID") or ""),
                    "name": texts["PatientName"],
                    "birth_date": str(get("PatientBirthDate") or "") or None,
                    "sex": str(get("PatientSex") or "") or None,
                },
            ),
            study=_fitted(
                _studies,
                {
                    "study_uid": study_uid,
                    "origin_id": sender.institution_id,
                    "device_id": sender.device_id,
                    "accession_number": str(get("AccessionNumber") or "") or None,
                    "study_date": str(get("StudyDate") or "") or None,
                    "study_time": str(get("StudyTime") or "") or None,
                    "description": texts["StudyDescription"],
                    # QIDO-RS return keys (migration 0005_dicomweb).
                    "referring_physician": texts["ReferringPhysicianName"],
                    "dicom_study_id": str(get("StudyID") or "") or None,
                    "revision": 0,
                    "num_instances": 0,
                },
            ),
            series=_fitted(
                _series,
                {
                    "series_uid": series_uid,
                    "modality": str(get("Modality") or "") or None,
                    "series_number": _int(get("SeriesNumber")),
                    "description": texts["SeriesDescription"],
                    "body_part": str(get("BodyPartExamined") or "") or None,
                },
            ),
            instance=_fitted(
                _instances,
                {
                    "sop_instance_uid": sop_uid,
                    "sop_class_uid": str(values["SOPClassUID"]),
                    "transfer_syntax_uid": header.transfer_syntax,
                    "instance_number": _int(get("InstanceNumber")),
                    "object_key": key,
                    "size_bytes": size,
                    "sha256": sha256,
                    "calling_ae": sender.ae_title,
                    "rows": _int(get("Rows")),
                    "columns": _int(get("Columns")),
                    "number_of_frames": _int(get("NumberOfFrames")),
                },
            ),
        )


# -- the index write: prebuilt Core statements, cached row ids --------------------------------
#
# The ORM version took ~3–4 ms per instance (two transactions, five SELECTs, four flushes; ~2 ms
# of it SQLAlchemy bookkeeping). Here: statements compiled once, row ids of recent studies and
# series remembered per database (a new instance of a known series is one INSERT and one UPDATE),
# inserts that race another association end in ON CONFLICT DO NOTHING rather than an error.

_patients, _studies = Patient.__table__, Study.__table__
_series, _instances = Series.__table__, Instance.__table__

_SELECT_INSTANCE = select(_instances.c.id).where(_instances.c.sop_instance_uid == bindparam("uid"))
_SELECT_STUDY = select(_studies.c.id).where(_studies.c.study_uid == bindparam("uid"))
_SELECT_SERIES = select(_series.c.id, _series.c.study_pk).where(
    _series.c.series_uid == bindparam("uid")
)
_TOUCH_STUDY = (
    update(_studies)
    .where(_studies.c.id == bindparam("pk"))
    .values(
        # SQL-side increments: concurrent associations of one study must not lose a count.
        num_instances=_studies.c.num_instances + 1,
        revision=_studies.c.revision + 1,
        last_received_at=bindparam("now", type_=_studies.c.last_received_at.type),
        # A new instance re-opens the study: it is processed again after the next quiet period.
        status=StudyStatus.RECEIVING,
    )
)

_IDS_MAX = 1024


class _RowIds:
    """Row ids of recently seen studies and series of one database (bounded, thread-safe)."""

    def __init__(self) -> None:
        self.studies: OrderedDict[str, int] = OrderedDict()
        self.series: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, table: OrderedDict[str, int], uid: str) -> int | None:
        with self._lock:
            return table.get(uid)

    def put(self, table: OrderedDict[str, int], uid: str, pk: int) -> None:
        with self._lock:
            table[uid] = pk
            if len(table) > _IDS_MAX:
                table.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self.studies.clear()
            self.series.clear()


_row_ids: weakref.WeakKeyDictionary[Engine, _RowIds] = weakref.WeakKeyDictionary()
_row_ids_lock = threading.Lock()


def _ids_for(session: Session) -> _RowIds:
    return _engine_ids(session.get_bind().engine)


def _engine_ids(engine: Engine) -> _RowIds:
    with _row_ids_lock:
        ids = _row_ids.get(engine)
        if ids is None:
            ids = _row_ids[engine] = _RowIds()
        return ids


class _Statements:
    """The dialect's INSERT … ON CONFLICT statements (SQLite and PostgreSQL both have them)."""

    def __init__(self, dialect: str) -> None:
        insert: Any = pg_insert if dialect == "postgresql" else sqlite_insert
        upsert = insert(_patients)
        self.patient = upsert.on_conflict_do_update(
            index_elements=[_patients.c.issuer, _patients.c.patient_id],
            # Demographics from the newest study win; an empty value keeps the stored one.
            set_={
                name: func.coalesce(upsert.excluded[name], _patients.c[name])
                for name in ("name", "birth_date", "sex")
            },
        ).returning(_patients.c.id)
        self.study = (
            insert(_studies)
            .on_conflict_do_nothing(index_elements=[_studies.c.study_uid])
            .returning(_studies.c.id)
        )
        self.series = (
            insert(_series)
            .on_conflict_do_nothing(index_elements=[_series.c.series_uid])
            .returning(_series.c.id)
        )
        self.instance = (
            insert(_instances)
            .on_conflict_do_nothing(index_elements=[_instances.c.sop_instance_uid])
            .returning(_instances.c.id)
        )


_statements: dict[str, _Statements] = {}


def _index(session: Session, row: _InstanceRow, stored: Callable[[], object]) -> bool:
    """Write one instance's rows in one transaction; True if it was already indexed.

    ``stored`` returns once the object is durable (or raises): it is called before the commit.
    SQLite has one writer at a time, so there it is called before the write lock is taken (a
    writer waiting on a disk flush would hold up every other association); PostgreSQL sends the
    inserts while the object is still being written and waits before touching the study row,
    which concurrent instances of the same study update.
    """
    conn = session.connection()
    dialect = conn.dialect.name
    statements = _statements.get(dialect) or _statements.setdefault(dialect, _Statements(dialect))
    ids = _ids_for(session)
    serialised = dialect == "sqlite"
    if serialised:
        stored()
    flush_after = deferred_flush(conn)
    now = utcnow()
    with write_lock(conn.engine):
        study_pk = ids.get(ids.studies, row.study_uid)
        if study_pk is None:
            study_pk = conn.execute(_SELECT_STUDY, {"uid": row.study_uid}).scalar()
        if study_pk is None:
            patient_pk = conn.execute(statements.patient, row.patient).scalar_one()
            values = {**row.study, "patient_pk": patient_pk}
            values.update(received_at=now, last_received_at=now)
            study_pk = conn.execute(statements.study, values).scalar()
            if study_pk is None:  # created by another association since the SELECT
                study_pk = conn.execute(_SELECT_STUDY, {"uid": row.study_uid}).scalar_one()
        series_pk = ids.get(ids.series, row.series_key)
        if series_pk is None:
            series_pk = conn.execute(
                statements.series, {**row.series, "study_pk": study_pk}
            ).scalar()
            if series_pk is None:
                found = conn.execute(_SELECT_SERIES, {"uid": row.series_uid}).one()
                series_pk = _series_of_study(row, study_pk, *found)
        instance_pk = conn.execute(
            statements.instance, {**row.instance, "series_pk": series_pk, "received_at": now}
        ).scalar()
        if not serialised:
            stored()
        if instance_pk is not None:
            conn.execute(_TOUCH_STUDY, {"pk": study_pk, "now": now})
        engine = conn.engine
        session.commit()
    if flush_after:
        try:
            make_durable(engine)  # outside the write lock: concurrent commits share one flush
        except OSError as exc:
            raise DatabaseUnavailable(f"cannot flush the index: {exc}") from exc
    ids.put(ids.studies, row.study_uid, study_pk)
    ids.put(ids.series, row.series_key, series_pk)
    return instance_pk is None


def _forget_object(store: ObjectStore, key: str) -> None:
    """Remove an object written for an instance that was then refused (nothing indexes it)."""
    try:
        store.delete(key)
    except Exception:  # fsck finds what is left; the refusal stands either way
        log.warning("could not remove the refused object %s", key, exc_info=True)


class SeriesOfAnotherStudy(InvalidInstance):
    """The instance names a series that is already filed under another study."""


def _series_of_study(row: _InstanceRow, study_pk: int, series_pk: int, owner_pk: int) -> int:
    """The existing series' row id, if it belongs to this instance's study.

    A Series Instance UID names one series of one study (PS3.3 C.7.3.1); filing the instance
    into the other study's series would show it under that study, to that study's readers.
    """
    if owner_pk != study_pk:
        raise SeriesOfAnotherStudy(
            f"Series Instance UID {row.series_uid} already belongs to another study than "
            f"{row.study_uid}; a series UID must name one series of one study (PS3.3 C.7.3.1)"
        )
    return series_pk


def _int(value: object) -> int | None:
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _limits(table: Table) -> dict[str, tuple[type, int]]:
    """Per column of ``table`` that has one: (str, its length) or (int, its largest value)."""
    limits: dict[str, tuple[type, int]] = {}
    for column in table.columns:
        kind = column.type
        if isinstance(kind, String) and kind.length:
            limits[column.key] = (str, kind.length)
        elif isinstance(kind, Integer) and not isinstance(kind, BigInteger):
            limits[column.key] = (int, 2**15 - 1 if isinstance(kind, SmallInteger) else 2**31 - 1)
    return limits


_LIMITS = {table.name: _limits(table) for table in (_patients, _studies, _series, _instances)}


def _fitted(table: Table, row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with each text cut to its column's length and each number its column cannot
    hold left out (None).

    A modality may send more than its VR allows (a 100-character LO, an IS of 99999999999):
    SQLite keeps it, PostgreSQL refused the row, and filing answered "database unavailable", a
    retryable failure the modality would repeat forever (73 of 2,000 fuzzed inputs on
    PostgreSQL did so for a number alone). The stored object keeps every value whole; only its
    index entry is cut. UIDs are never cut: an invalid one is refused before (PS3.5 §9).
    """
    limits = _LIMITS[table.name]
    for name, value in row.items():
        limit = limits.get(name)
        if limit is None or value is None:
            continue
        kind, largest = limit
        if kind is str and isinstance(value, str) and len(value) > largest:
            row[name] = value[:largest]
        elif kind is int and isinstance(value, int) and not -largest - 1 <= value <= largest:
            row[name] = None
    return row
