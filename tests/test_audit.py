"""The audit trail (issue 7): hash chain, tamper detection, concurrency on SQLite and PostgreSQL,
the generic request auditing with patient and object, the admin search / CSV API and the CLI."""

from __future__ import annotations

import asyncio
import csv
import io
import itertools
import json
import threading
from datetime import timedelta

import httpx
import psycopg
import pytest
from fastapi import HTTPException
from fastapi.testclient import TestClient
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy import create_engine, event, select, text, update
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool
from starlette.requests import Request
from typer.testing import CliRunner

from remote_dx.api.app import create_app
from remote_dx.api.audit import audit_sessions
from remote_dx.api.deps import hot_cursor
from remote_dx.cli import app as cli
from remote_dx.core import audit as chain
from remote_dx.core.clock import utcnow
from remote_dx.core.db import (
    dispose_engines,
    get_hot_read_sessionmaker,
    get_sessionmaker,
    session_scope,
)
from remote_dx.core.migrate import upgrade
from remote_dx.core.models import (
    AuditRecord,
    Device,
    Institution,
    Study,
    StudyStatus,
    WorklistItem,
)
from remote_dx.core.psycopg_statements import PsycopgQuery
from remote_dx.core.settings import Settings
from remote_dx.ingest.instance import Sender, file_instance
from remote_dx.storage.factory import get_store

# -- the chain itself --------------------------------------------------------------------------


def _event(n: int) -> chain.AuditEvent:
    return chain.AuditEvent(
        action="view",
        username=f"user{n % 3}",
        role="reader",
        institution="XXXRMYY",
        patient=f"P{n}^^^XIPING",
        object_type="study",
        object_id=f"1.2.3.{n}",
        client_address="10.0.0.7",
        method="GET",
        path=f"/api/v1/studies/1.2.3.{n}",
        status_code=200,
        detail={"note": "王小东", "n": n},
    )


def test_records_link_and_verify(db: sessionmaker[Session]) -> None:
    for n in range(5):
        chain.append(db, _event(n))
    with db() as session:
        records = list(session.scalars(select(AuditRecord).order_by(AuditRecord.seq)))
        assert [r.seq for r in records] == [1, 2, 3, 4, 5]
        assert records[0].prev_hash == chain.GENESIS_HASH
        for before, after in itertools.pairwise(records):
            assert after.prev_hash == before.hash
        assert records[2].detail == {"note": "王小东", "n": 2}
        assert chain.verify_chain(session) == chain.ChainCheck(True, 5)


@pytest.mark.parametrize(
    ("tamper", "broken", "reason"),
    [
        ("UPDATE audit_records SET username = 'someone_else' WHERE seq = 3", 3, "content"),
        ("UPDATE audit_records SET outcome = 4 WHERE seq = 2", 2, "content"),
        ("DELETE FROM audit_records WHERE seq = 4", 4, "missing"),
        ("DELETE FROM audit_records WHERE seq = 6", 6, "removed from the end"),
        ("UPDATE audit_records SET prev_hash = hash WHERE seq = 5", 5, "prev_hash"),
    ],
)
def test_tampering_is_found_at_the_first_broken_record(
    db: sessionmaker[Session], tamper: str, broken: int, reason: str
) -> None:
    for n in range(6):
        chain.append(db, _event(n))
    with db() as session, session.begin():
        session.execute(text(tamper))
    with db() as session:
        result = chain.verify_chain(session)
    assert not result.ok
    assert result.broken_seq == broken
    assert reason in (result.reason or "")


def test_recomputing_a_tampered_records_hash_still_breaks_the_next_link(
    db: sessionmaker[Session],
) -> None:
    for n in range(4):
        chain.append(db, _event(n))
    with db() as session, session.begin():
        record = session.scalar(select(AuditRecord).where(AuditRecord.seq == 2))
        record.username = "forger"
        fields = {name: getattr(record, name) for name in chain.HASHED_FIELDS}
        record.hash = chain.record_hash(fields, record.prev_hash)
    with db() as session:
        result = chain.verify_chain(session)
    assert (result.ok, result.broken_seq) == (False, 3)


def _hammer(sessions: sessionmaker[Session], threads: int, each: int) -> None:
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for n in range(each):
                chain.append(sessions, _event(k * 1000 + n))
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert not errors, errors


def test_parallel_appends_keep_one_chain_on_sqlite(db: sessionmaker[Session]) -> None:
    _hammer(db, threads=8, each=15)
    with db() as session:
        assert chain.verify_chain(session) == chain.ChainCheck(True, 120)


def _close_every_other_connection(database_url: str) -> int:
    """What a PostgreSQL restart does to the pools: every other backend of the database ended
    (pg_terminate_backend); how many were."""
    with create_engine(database_url, poolclass=NullPool).connect() as admin:
        return admin.execute(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        ).scalar_one()


def test_parallel_appends_keep_one_chain_on_postgresql(tmp_path, postgres_database: str) -> None:
    settings = Settings(data_dir=tmp_path / "var", database_url=postgres_database)
    upgrade(settings)
    sessions = get_sessionmaker(settings)
    _hammer(sessions, threads=8, each=15)
    with sessions() as session:
        assert chain.verify_chain(session) == chain.ChainCheck(True, 120)


def test_postgresql_appends_survive_connections_the_server_closed(
    tmp_path, postgres_database: str
) -> None:
    """A PostgreSQL restart leaves the audit engine's pool holding closed connections: the next
    append fails on one at its first statement and is written on a fresh connection, once."""
    settings = Settings(data_dir=tmp_path / "var", database_url=postgres_database)
    upgrade(settings)
    engine = create_engine(postgres_database, pool_size=2, max_overflow=0)
    sessions = sessionmaker(engine, expire_on_commit=False)
    try:
        _hammer(sessions, threads=2, each=3)  # the pool now keeps the connection they used
        assert _close_every_other_connection(postgres_database) >= 1
        chain.append(sessions, _event(100))
        chain.append(sessions, _event(101))
        with sessions() as session:
            assert chain.verify_chain(session) == chain.ChainCheck(True, 8)
            last = session.scalar(select(AuditRecord).order_by(AuditRecord.seq.desc()).limit(1))
            assert last is not None and last.object_id == "1.2.3.101"
    finally:
        engine.dispose()


def test_postgresql_appends_are_the_records_the_session_path_writes(
    tmp_path, postgres_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database's one-call append and the session append write the same columns, and each
    links to the other's records: the verifier cannot tell which wrote what."""
    settings = Settings(data_dir=tmp_path / "var", database_url=postgres_database)
    upgrade(settings)
    sessions = get_sessionmaker(settings)
    in_the_database = chain.append(sessions, _event(1))
    with monkeypatch.context() as patch:
        patch.setattr(chain, "_append_batch", chain._append_batch_session)
        through_session = chain.append(sessions, _event(2))
    chain.append(sessions, _event(3))
    with sessions() as session:
        assert chain.verify_chain(session) == chain.ChainCheck(True, 3)
        stored = {r.seq: r for r in session.scalars(select(AuditRecord))}
    for written in (in_the_database, through_session):
        row = stored[written.seq]
        assert chain._fields(row) == chain._fields(written)
        assert (row.prev_hash, row.hash) == (written.prev_hash, written.hash)
    assert stored[1].detail == {"note": "王小东", "n": 1}
    assert stored[1].recorded_at.tzinfo is not None


# What a client can put in a record's fields (a path, a query, a user name, a detail) that
# spells the placeholders canonical_parts cuts out, or needs escaping, or is not ASCII.
_AWKWARD = (
    {"note": '"prev_hash":"\\u0000"', "seq": None, "prev_hash": "\x00"},
    {"nested": {"seq": None, "prev_hash": "\x00", "z": ['"seq":null']}},
    {"王": "小东 心电图 ST段抬高", "quote": '"', "backslash": "\\", "tab": "\t"},
    {},
)


def _awkward_event(n: int) -> chain.AuditEvent:
    event = _event(n)
    event.username = ["李医生", 'a"seq":null', 'b"prev_hash":"\\u0000"', None][n % 4]
    event.path = f'/api/v1/studies/1.2.3.{n}?q="seq":null'
    event.detail = _AWKWARD[n % len(_AWKWARD)]
    return event


def test_canonical_is_the_sorted_compact_json_of_the_fields_and_prev_hash() -> None:
    """canonical() is filled in from canonical_parts(); the bytes hashed are still the JSON the
    chain was defined with, so records written before keep verifying."""
    for n in range(24):
        fields = {"seq": 10**n, "recorded_at": utcnow(), **chain._row(_awkward_event(n), {})}
        fields["detail"] = _AWKWARD[n % len(_AWKWARD)]
        prev_hash = f"{n:064x}"
        defined = {name: fields[name] for name in chain.HASHED_FIELDS}
        defined["recorded_at"] = chain._timestamp(fields["recorded_at"])
        defined["prev_hash"] = prev_hash
        assert (
            chain.canonical(fields, prev_hash)
            == json.dumps(
                defined, sort_keys=True, separators=(",", ":"), ensure_ascii=False
            ).encode()
        )


def test_postgresql_links_awkward_records_as_the_verifier_does(
    tmp_path, postgres_database: str
) -> None:
    """audit_chain_append (migration 0010) hashes in the database what canonical() hashes here:
    Chinese text, quotes, backslashes and fields that spell the placeholders included."""
    settings = Settings(data_dir=tmp_path / "var", database_url=postgres_database)
    upgrade(settings)
    sessions = get_sessionmaker(settings)
    batch = [(e, json.loads(json.dumps(e.detail))) for e in map(_awkward_event, range(12))]
    engine = sessions.kw["bind"]
    written = chain._append_batch_psycopg(engine, batch[:5]) or []
    written += chain._append_batch_psycopg(engine, batch[5:]) or []
    assert [w["seq"] for w in written] == list(range(1, 13))
    prev_hash = chain.GENESIS_HASH
    for values in written:
        assert values["prev_hash"] == prev_hash
        assert values["hash"] == chain.record_hash(values, prev_hash)
        prev_hash = values["hash"]
    with sessions() as session:
        assert chain.verify_chain(session) == chain.ChainCheck(True, 12)
        stored = list(session.scalars(select(AuditRecord).order_by(AuditRecord.seq)))
    assert [r.detail for r in stored] == [_AWKWARD[n % len(_AWKWARD)] for n in range(12)]
    assert stored[0].username == "李医生"


def test_a_nul_in_a_request_path_is_audited_without_failing_the_batch(
    any_backend: Settings,
) -> None:
    """A path can carry U+0000 (``%00``), which PostgreSQL text cannot hold: the record keeps
    U+FFFD in its place rather than failing, with the other records of its batch (whose answers
    would then be withheld)."""
    client = TestClient(create_app(any_backend))
    headers = _bearer(client, "county_reader")
    assert client.get("/api/v1/studies/1.2%00.3", headers=headers).status_code == 422
    sessions = get_sessionmaker(any_backend)
    refused = [r for r in _records(sessions, outcome=chain.MINOR_FAILURE) if r.status_code == 422]
    assert [r.path for r in refused] == ["/api/v1/studies/1.2\ufffd.3"]
    assert refused[0].object_id == "1.2\ufffd.3"
    with sessions() as session:
        assert chain.verify_chain(session).ok


def test_a_failed_append_gives_its_connection_back_in_a_transaction(
    tmp_path, postgres_database: str
) -> None:
    """The one-call append runs in autocommit; a connection it used goes back to the pool as
    it was lent even when the call failed, so the session path's bump stays in its
    transaction (its lock held to the commit)."""
    settings = Settings(data_dir=tmp_path / "var", database_url=postgres_database)
    upgrade(settings)
    engine = create_engine(postgres_database, pool_size=1, max_overflow=0)
    try:
        too_long = _event(1)
        too_long.status_code = 2**40  # beyond the integer column: the call fails
        with pytest.raises(psycopg.Error):
            chain._append_batch_psycopg(engine, [(too_long, {})])
        pooled = engine.raw_connection()
        try:
            assert pooled.driver_connection.autocommit is False
        finally:
            pooled.close()
        assert chain._append_batch_psycopg(engine, [(_event(2), {"n": 2})]) is not None
        with sessionmaker(engine)() as session:
            assert chain.verify_chain(session) == chain.ChainCheck(True, 1)
    finally:
        engine.dispose()


def test_a_refused_hot_read_gives_its_connection_back_in_a_transaction(
    settings: Settings, postgres_database: str
) -> None:
    """A hot read refused inside hot_cursor (401: a disabled user) gives its connection back
    out of autocommit: the worklist page read next on it keeps its transaction, where its SET
    LOCAL lasts."""
    app = create_app(_seeded(settings, postgres_database))
    engine = app.state.hot_read_sessions.kw["bind"]
    request = Request({"type": "http", "app": app, "headers": [], "state": {}})
    with pytest.raises(HTTPException), hot_cursor(request, "a-token") as cursor:
        assert cursor is not None and cursor.connection.autocommit
        used = cursor.connection
        raise HTTPException(401)
    pooled = engine.raw_connection()  # the pool's one connection so far: the same
    try:
        assert pooled.driver_connection is used
        assert used.autocommit is False
    finally:
        pooled.close()


def test_the_writer_gathers_a_moment_only_after_a_batch_with_company(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A lone record is written at once; after a batch of several (others reading at the same
    time) the writer waits GATHER_SECONDS so that the next batch is bigger."""
    slept: list[float] = []
    batches: list[int] = []
    first_taken, release = threading.Event(), threading.Event()

    def append_batch(_sessions, batch):
        batches.append(len(batch))
        first_taken.set()
        release.wait(10)
        return [{"seq": len(batches)} for _ in batch]

    monkeypatch.setattr(chain, "_append_batch", append_batch)
    monkeypatch.setattr(chain.time, "sleep", slept.append)
    writer, sessions = chain._GroupAppender(), sessionmaker()  # sessions unused by the fake
    alone = writer.submit(sessions, _event(1))
    assert first_taken.wait(10)
    together = [writer.submit(sessions, _event(n)) for n in (2, 3)]
    assert slept == []
    release.set()
    alone.result(10)
    for future in together:
        future.result(10)
    assert batches == [1, 2]
    deadline = utcnow() + timedelta(seconds=10)
    while not slept and utcnow() < deadline:
        threading.Event().wait(0.01)
    assert slept == [chain._GroupAppender.GATHER_SECONDS]


# -- requests are audited ------------------------------------------------------------------------


def _dx(patient_id: str) -> bytes:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "DX"
    ds.PatientName = "王^小东"
    ds.PatientID = patient_id
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = DicomBytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.fixture
def routed_study(settings: Settings, db: sessionmaker[Session]) -> str:
    return _routed_study(settings, db)


def _routed_study(settings: Settings, db: sessionmaker[Session]) -> str:
    """A study filed from XIPING_DR and on the county pool's worklist; its UID."""
    with db() as session:
        sender = Sender.of(session.scalar(select(Device).where(Device.ae_title == "XIPING_DR")))
    filed = file_instance(_dx("AUD001"), store=get_store(settings), sessions=db, sender=sender)
    with db() as session, session.begin():
        study = session.scalar(select(Study).where(Study.study_uid == filed.study_uid))
        county = session.scalar(select(Institution).where(Institution.code == "XXXRMYY"))
        study.status = StudyStatus.PROCESSED
        session.add(
            WorklistItem(study_pk=study.id, pool_id=county.id, due_at=utcnow(), routing_rule="t")
        )
    return filed.study_uid


def _login(client: TestClient, username: str, password: str = "demo"):
    return client.post("/api/v1/auth/token", data={"username": username, "password": password})


def _bearer(client: TestClient, username: str) -> dict[str, str]:
    response = _login(client, username)
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def _records(db: sessionmaker[Session], **where: object) -> list[AuditRecord]:
    with db() as session:
        statement = select(AuditRecord).order_by(AuditRecord.seq)
        for name, value in where.items():
            statement = statement.where(getattr(AuditRecord, name) == value)
        return list(session.scalars(statement))


def test_logins_views_signs_and_refusals_are_recorded(
    settings: Settings, db: sessionmaker[Session], routed_study: str
) -> None:
    client = TestClient(create_app(settings))
    assert _login(client, "county_reader", "wrong").status_code == 401
    reader = _bearer(client, "county_reader")
    failed, succeeded = _records(db, action="login")
    assert (failed.username, failed.outcome, failed.status_code) == ("county_reader", 4, 401)
    assert failed.user_id is None and failed.client_address == "testclient"
    assert (succeeded.username, succeeded.outcome, succeeded.role) == ("county_reader", 0, "reader")
    assert succeeded.institution == "XXXRMYY"

    assert client.get(f"/api/v1/studies/{routed_study}", headers=reader).status_code == 200
    (view,) = _records(db, action="view", object_id=routed_study)
    assert (view.username, view.role, view.institution) == ("county_reader", "reader", "XXXRMYY")
    assert view.patient == "AUD001^^^XIPING" or view.patient.startswith("AUD001")
    assert (view.object_type, view.method, view.status_code) == ("study", "GET", 200)

    # A foreign reader's attempt is recorded as a failure, with the patient it was aimed at.
    province = _bearer(client, "province_reader")
    assert client.get(f"/api/v1/studies/{routed_study}", headers=province).status_code == 404
    (refused,) = _records(db, username="province_reader", object_id=routed_study)
    assert (refused.outcome, refused.status_code, refused.institution) == (4, 404, "HNSRMYY")

    # The reading steps get their own action names (sign, escalate, …).
    client.post(f"/api/v1/worklist/{routed_study}/claim", headers=reader)
    sign = client.post(
        f"/api/v1/studies/{routed_study}/report/sign",
        headers=reader,
        json={"content": {"findings": "双肺纹理清晰", "impression": "未见异常"}},
    )
    assert sign.status_code in (200, 201), sign.text
    (signed,) = _records(db, action="sign")
    assert signed.object_id == routed_study and signed.outcome == 0
    assert [r.action for r in _records(db, action="claim")] == ["claim"]

    # Anonymous requests are recorded too; health probes are not.
    assert client.get("/api/v1/worklist").status_code == 401
    client.get("/healthz")
    anonymous = _records(db, path="/api/v1/worklist")
    assert anonymous[-1].username is None and anonymous[-1].status_code == 401
    assert not _records(db, path="/healthz")
    with db() as session:
        assert chain.verify_chain(session).ok


def test_downloads_are_told_from_views(
    settings: Settings, db: sessionmaker[Session], routed_study: str
) -> None:
    from remote_dx.api.audit import _action

    assert _action("GET", "/x/{study_uid}/report.pdf", "application/pdf", None) == "download"
    assert _action("GET", "/x/render.{fmt}", "image/png", None) == "download"
    assert _action("GET", "/dicom-web/studies/{study_uid}", "multipart/related", None) == (
        "download"
    )
    assert _action("GET", "/api/v1/audit", "text/csv; charset=utf-8", None) == "export"
    assert _action("GET", "/api/v1/worklist", "application/json", None) == "view"
    assert _action("POST", "/api/v1/studies/{study_uid}/report/amend", "", None) == "amend"
    assert _action("POST", "/api/v1/studies/{study_uid}/consultations", "", None) == "escalate"


@pytest.mark.parametrize("path", ["/api/v1/studies/{uid}", "/api/v1/worklist?limit=5"])
def test_an_unwritable_audit_trail_withholds_the_data(
    settings: Settings, db: sessionmaker[Session], routed_study: str, monkeypatch, path: str
) -> None:
    """The hot reads (their record awaited on the event loop) and the middleware's records
    alike: a record that cannot be committed turns the answer into a 503."""
    client = TestClient(create_app(settings))
    reader = _bearer(client, "county_reader")

    def broken(*_args, **_kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(chain, "_append_batch", broken)
    response = client.get(path.format(uid=routed_study), headers=reader)
    assert response.status_code == 503
    assert "audit" in response.json()["detail"]
    assert "AUD001" not in response.text
    assert response.headers["retry-after"] == "5"
    # A middleware-written record (a route that is not a hot read) fails the same way.
    response = client.get("/api/v1/worklist/counts", headers=reader)
    assert response.status_code == 503


def test_a_hot_read_waits_for_its_record_without_holding_a_thread(
    settings: Settings, db: sessionmaker[Session], routed_study: str, monkeypatch
) -> None:
    """While the chain's writer is held up, more study views than the hot reads' thread slots
    all get as far as handing over their record: the wait for the commit is on the event loop.
    Each answer still leaves only after its record is committed."""
    from remote_dx.api.deps import HOT_READS_AT_ONCE

    app = create_app(settings)
    reader = _bearer(TestClient(app), "county_reader")
    many = HOT_READS_AT_ONCE["study"] + 4
    release = threading.Event()
    handed_over: list[chain.AuditEvent] = []
    committed: list[int] = []
    submit, append_batch = chain.submit, chain._append_batch

    def counted(sessions, event):
        handed_over.append(event)
        return submit(sessions, event)

    def held(sessions, batch):
        release.wait(30)
        records = append_batch(sessions, batch)
        committed.extend(r["seq"] for r in records)
        return records

    monkeypatch.setattr(chain, "submit", counted)
    monkeypatch.setattr(chain, "_append_batch", held)

    async def views() -> tuple[int, int, list[httpx.Response]]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://hub") as http:
            url = f"/api/v1/studies/{routed_study}"
            asks = [asyncio.create_task(http.get(url, headers=reader)) for _ in range(many)]
            try:
                for _ in range(2000):
                    if len(handed_over) == many:
                        break
                    await asyncio.sleep(0.01)
                seen, answered = len(handed_over), sum(ask.done() for ask in asks)
            finally:
                release.set()
            return seen, answered, await asyncio.gather(*asks)

    seen, answered_before_commit, answers = asyncio.run(views())
    assert seen == many
    assert answered_before_commit == 0
    assert [a.status_code for a in answers] == [200] * many
    assert len(committed) == many


def test_admin_search_and_csv_export(
    settings: Settings, db: sessionmaker[Session], routed_study: str
) -> None:
    client = TestClient(create_app(settings))
    reader = _bearer(client, "county_reader")
    client.get(f"/api/v1/studies/{routed_study}", headers=reader)
    admin = _bearer(client, "admin")

    found = client.get(
        "/api/v1/audit", headers=admin, params={"user": "county_reader", "action": "view"}
    )
    assert found.status_code == 200, found.text
    (entry,) = found.json()
    assert entry["object_id"] == routed_study and entry["patient"].startswith("AUD001")

    patient = entry["patient"]
    by_patient = client.get("/api/v1/audit", headers=admin, params={"patient": patient}).json()
    assert {e["username"] for e in by_patient} == {"county_reader"}
    later = (utcnow() + timedelta(hours=1)).isoformat()
    assert client.get("/api/v1/audit", headers=admin, params={"from": later}).json() == []
    assert client.get("/api/v1/audit", headers=admin, params={"to": later}).json()

    exported = client.get("/api/v1/audit", headers=admin, params={"format": "csv"})
    assert exported.status_code == 200
    assert exported.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(exported.content.decode("utf-8-sig"))))
    assert rows[0]["seq"] == "1" and rows[0]["action"] == "login"
    assert any(r["object_id"] == routed_study for r in rows)
    assert set(rows[0]) >= {"username", "role", "institution", "patient", "client_address"}

    status = client.get("/api/v1/audit/verify", headers=admin).json()
    assert status["ok"] is True and status["records"] >= 4
    assert client.get("/api/v1/audit", headers=reader).status_code == 403


def test_cli_verify_and_export(settings: Settings, db: sessionmaker[Session], tmp_path) -> None:
    for n in range(3):
        chain.append(db, _event(n))
    runner = CliRunner()
    args = ["--data-dir", str(settings.data_dir)]
    result = runner.invoke(cli, ["audit", "verify", *args])
    assert result.exit_code == 0, result.output
    assert "3 records" in result.output

    out = tmp_path / "audit.jsonl"
    result = runner.invoke(cli, ["audit", "export", "-o", str(out), *args])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [line["seq"] for line in lines] == [1, 2, 3]
    # The exported copy verifies on its own: each line's hash from its fields.
    for line in lines:
        assert chain.record_hash(line, line["prev_hash"]) == line["hash"]

    with session_scope(settings) as session:
        session.execute(
            update(AuditRecord).where(AuditRecord.seq == 2).values(client_address="1.1.1.1")
        )
    result = runner.invoke(cli, ["audit", "verify", *args])
    assert result.exit_code == 1
    assert "record 2" in result.output


@pytest.fixture(params=["sqlite", "postgresql"])
def any_backend(request, settings: Settings) -> Settings:
    """The test settings on SQLite, or on a fresh PostgreSQL database, migrated and seeded."""
    if request.param == "sqlite":
        return _seeded(settings)
    return _seeded(settings, request.getfixturevalue("postgres_database"))


def _seeded(settings: Settings, database_url: str | None = None) -> Settings:
    """``settings`` (on ``database_url`` if given), migrated and seeded with the demo network."""
    chosen = settings
    if database_url is not None:
        chosen = settings.model_copy(update={"database_url": database_url})
    upgrade(chosen)
    from remote_dx.core.network import apply_network, load_network_file
    from tests.support import DEMO_NETWORK

    with session_scope(chosen) as session:
        apply_network(session, load_network_file(DEMO_NETWORK), with_passwords=True)
    return chosen


def test_the_hot_reads_skip_their_round_trips_on_postgresql(
    settings: Settings, postgres_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL the study view and a kept worklist page read outside a transaction (no
    COMMIT round trip) through psycopg's own cursor, the study view without the join-order SET
    (a round trip of its own); a worklist page read from the database keeps its transaction,
    where the SET LOCAL lasts. Their pool lends connections without pinging them. All are still
    answered and audited."""
    postgres = _seeded(settings, postgres_database)
    sessions = get_sessionmaker(postgres)
    study_uid = _routed_study(postgres, sessions)
    client = TestClient(create_app(postgres))
    headers = _bearer(client, "county_reader")
    seen: list[tuple[str, bool]] = []

    def spy(connection, cursor, statement, parameters, context, executemany) -> None:
        seen.append((statement, connection.connection.driver_connection.autocommit))

    execute = PsycopgQuery._execute

    def spied(query, cursor, values) -> None:
        seen.append((query.sql, cursor.connection.autocommit))
        execute(query, cursor, values)

    def statements_of(path: str) -> list[tuple[str, bool]]:
        seen.clear()
        answer = client.get(path, headers=headers)
        assert answer.status_code == 200, answer.text
        return list(seen)

    engine = get_hot_read_sessionmaker(postgres, connections=6).kw["bind"]
    pings: list[object] = []
    ping = engine.dialect.do_ping
    engine.dialect.do_ping = lambda connection: pings.append(connection) or ping(connection)
    event.listen(engine, "before_cursor_execute", spy)
    monkeypatch.setattr(PsycopgQuery, "_execute", spied)
    try:
        first_page = statements_of("/api/v1/worklist")
        kept_page = statements_of("/api/v1/worklist")
        study = statements_of(f"/api/v1/studies/{study_uid}")
    finally:
        event.remove(engine, "before_cursor_execute", spy)
        engine.dialect.do_ping = ping
    assert pings == []
    # Read from the database: the user alone, then the SET and the page in a transaction.
    assert first_page[0][1] is True and "FROM users" in first_page[0][0]
    assert any("set_config" in statement for statement, _ in first_page)
    assert all(not autocommit for _, autocommit in first_page[1:]), first_page
    # Kept: the user and the pool's counter, one statement, no transaction.
    assert len(kept_page) == 1 and kept_page[0][1] is True, kept_page
    # The user, the study, its series; nothing else.
    assert [s.split("FROM ")[1].split()[0] for s, _ in study] == ["users", "studies", "series"]
    assert all(autocommit for _, autocommit in study), study
    views = _records(sessions, path=f"/api/v1/studies/{study_uid}")
    assert [(r.action, r.patient) for r in views] == [("view", "AUD001^^^XIPING")]
    assert len(_records(sessions, path="/api/v1/worklist")) == 1  # the repeat is covered
    with sessions() as session:
        assert chain.verify_chain(session).ok


def test_a_hot_read_reads_again_after_postgresql_closed_its_connection(
    settings: Settings, postgres_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The hot reads' pool does not ping: after a PostgreSQL restart (here its backends
    terminated) the first view finds a dead connection, and is read again on a fresh one."""
    postgres = _seeded(settings, postgres_database)
    study_uid = _routed_study(postgres, get_sessionmaker(postgres))
    client = TestClient(create_app(postgres))
    headers = _bearer(client, "county_reader")
    assert client.get(f"/api/v1/studies/{study_uid}", headers=headers).status_code == 200
    assert _close_every_other_connection(postgres_database) >= 1
    with caplog.at_level("WARNING", logger="remote_dx.api.deps"):
        answer = client.get(f"/api/v1/studies/{study_uid}", headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.json()["study_uid"] == study_uid
    assert "dead database connection" in caplog.text


def test_the_audit_engine_keeps_one_sessionmaker(settings: Settings) -> None:
    """One sessionmaker per audit engine (each makes a Session class SQLAlchemy sets up on first
    use), and a new one once the engines were disposed."""
    url = settings.resolved_database_url
    first = audit_sessions(url)
    assert audit_sessions(url) is first
    dispose_engines()
    again = audit_sessions(url)
    assert again is not first and again.kw["bind"] is not first.kw["bind"]


def test_parallel_requests_keep_one_chain(any_backend: Settings) -> None:
    """Requests served at the same time (each TestClient call runs its own event loop in its
    own thread) each get one record, and the chain stays whole."""
    client = TestClient(create_app(any_backend))
    headers = _bearer(client, "county_reader")
    errors: list[BaseException] = []

    def work(thread: int) -> None:
        try:
            for i in range(5):
                # Each a different search (a repeated one is covered by its first record).
                url = f"/api/v1/worklist?offset={thread * 5 + i}"
                assert client.get(url, headers=headers).status_code == 200
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    sessions = get_sessionmaker(any_backend)
    with sessions() as session:
        views = session.scalars(
            select(AuditRecord).where(AuditRecord.path == "/api/v1/worklist")
        ).all()
        assert len(views) == 40
        assert chain.verify_chain(session) == chain.ChainCheck(True, 41)  # + the login


def test_repeated_reads_of_a_study_are_covered_by_one_record(
    settings: Settings, db: sessionmaker[Session], routed_study: str
) -> None:
    # A viewer fetches a study as many requests (metadata, every frame); one record covers them.
    client = TestClient(create_app(settings))
    reader = _bearer(client, "county_reader")
    for _ in range(5):
        assert client.get(f"/api/v1/studies/{routed_study}", headers=reader).status_code == 200
    (view,) = _records(db, action="view", object_id=routed_study)
    assert view.detail["covers_reads_for_seconds"] == settings.audit_coalesce_seconds

    # Another user's reads, and refusals, get their own records.
    supervisor = _bearer(client, "county_supervisor")
    client.get(f"/api/v1/studies/{routed_study}", headers=supervisor)
    province = _bearer(client, "province_reader")
    for _ in range(2):
        assert client.get(f"/api/v1/studies/{routed_study}", headers=province).status_code == 404
    assert len(_records(db, username="county_supervisor", object_id=routed_study)) == 1
    assert len(_records(db, username="province_reader", object_id=routed_study)) == 2


def test_a_repeated_search_is_covered_by_its_first_record(
    settings: Settings, db: sessionmaker[Session]
) -> None:
    # The worklist page re-reads itself on every live event: the same query, one record.
    client = TestClient(create_app(settings))
    reader = _bearer(client, "county_reader")
    for _ in range(4):
        assert client.get("/api/v1/worklist?limit=50", headers=reader).status_code == 200
    assert client.get("/api/v1/worklist?limit=20", headers=reader).status_code == 200
    for _ in range(2):
        assert client.get("/dicom-web/studies?PatientID=X1", headers=reader).status_code == 200
    assert client.get("/dicom-web/studies?PatientID=X2", headers=reader).status_code == 200
    with db() as session:
        paths = [
            (r.path, r.detail.get("query"), "covers_reads_for_seconds" in r.detail)
            for r in session.scalars(
                select(AuditRecord)
                .where(
                    AuditRecord.username == "county_reader",
                    AuditRecord.path.in_(["/api/v1/worklist", "/dicom-web/studies"]),
                )
                .order_by(AuditRecord.seq)
            )
        ]
    assert paths == [
        ("/api/v1/worklist", "limit=50", True),
        ("/api/v1/worklist", "limit=20", True),
        ("/dicom-web/studies", "PatientID=X1", True),
        ("/dicom-web/studies", "PatientID=X2", True),
    ]

    # Another user's identical search is theirs to account for.
    province = _bearer(client, "province_reader")
    assert client.get("/api/v1/worklist?limit=50", headers=province).status_code == 200
    assert len(_records(db, username="province_reader", path="/api/v1/worklist")) == 1


def test_coalescing_can_be_switched_off(
    settings: Settings, db: sessionmaker[Session], routed_study: str
) -> None:
    client = TestClient(create_app(settings.model_copy(update={"audit_coalesce_seconds": 0})))
    reader = _bearer(client, "county_reader")
    for _ in range(3):
        assert client.get(f"/api/v1/studies/{routed_study}", headers=reader).status_code == 200
    views = _records(db, action="view", object_id=routed_study)
    assert len(views) == 3 and all("covers_reads_for_seconds" not in v.detail for v in views)
