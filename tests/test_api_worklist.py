"""Worklist and study read API: scoping by role and institution, decoded names, filters, paging,
ordering, 404 without revealing existence, and the health probes (issue 2, item 6).

Studies enter through the real filing door (``ingest.instance.file_instance``) as their devices
would send them; routing is then simulated by adding the WorklistItem row the worker would add.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy import event, select, text
from sqlalchemy.orm import Session, sessionmaker

from remote_dx.api.app import create_app
from remote_dx.api.deps import HOT_READS_AT_ONCE
from remote_dx.core import clock
from remote_dx.core.clock import utcnow
from remote_dx.core.db import get_engine, get_hot_read_sessionmaker, get_sessionmaker
from remote_dx.core.models import (
    Device,
    Institution,
    Priority,
    Role,
    Study,
    StudyStatus,
    User,
    WorklistItem,
    WorklistStatus,
)
from remote_dx.core.security import hash_password
from remote_dx.core.settings import Settings
from remote_dx.ingest.instance import Sender, file_instance
from remote_dx.storage.factory import get_store
from tests.support import demo_hub_on, free_port

COUNTY, PROVINCE = "XXXRMYY", "HNSRMYY"
XIPING, DINGHE = "XIPING", "DINGHE"
NAMES = {
    COUNTY: "西峡县人民医院",
    PROVINCE: "河南省人民医院",
    XIPING: "西坪镇卫生院",
    DINGHE: "丁河镇卫生院",
}
DEVICE_OF = {
    (XIPING, "DX"): "XIPING_DR",
    (XIPING, "ECG"): "XIPING_ECG",
    (DINGHE, "DX"): "DINGHE_DR",
}
SOP_CLASS = {"DX": "1.2.840.10008.5.1.4.1.1.1.1", "ECG": "1.2.840.10008.5.1.4.1.1.9.1.1"}
RANK = {Priority.STAT: 0, Priority.URGENT: 1, Priority.ROUTINE: 2}


@dataclass
class Case:
    key: str
    origin: str
    modality: str
    patient_name: str
    charset: str
    pool: str | None  # None: not routed yet
    priority: Priority = Priority.ROUTINE
    status: WorklistStatus = WorklistStatus.UNREAD
    due_in: timedelta = timedelta(hours=24)
    instances: int = 1
    index_modalities: bool = True  # False: processing has not filled Study.modalities yet
    study_uid: str = ""
    received_at: datetime | None = None
    due_at: datetime | None = None


CASES = [
    Case("xp-chest", XIPING, "DX", "王^小东", "GB18030", COUNTY, instances=2,
         index_modalities=False),
    Case("dh-stat", DINGHE, "DX", "李^娜", "ISO_IR 192", COUNTY, Priority.STAT,
         due_in=timedelta(minutes=30)),
    Case("xp-ecg", XIPING, "ECG", "张^伟", "GB18030", COUNTY, Priority.URGENT,
         WorklistStatus.CLAIMED, due_in=timedelta(hours=2)),
    Case("dh-consult", DINGHE, "DX", "赵^敏", "ISO_IR 192", PROVINCE, due_in=timedelta(hours=20)),
    Case("xp-ecg-stat", XIPING, "ECG", "陈^静", "GB18030", PROVINCE, Priority.STAT,
         due_in=timedelta(minutes=10)),
    Case("dh-routine-2", DINGHE, "DX", "刘^洋", "ISO_IR 192", COUNTY, due_in=timedelta(hours=30)),
    Case("xp-arriving", XIPING, "DX", "周^杰", "GB18030", None),
]  # fmt: skip


def dicom_bytes(case: Case, series_uid: str, number: int, patient_id: str) -> bytes:
    ds = Dataset()
    ds.SpecificCharacterSet = case.charset
    ds.SOPClassUID = SOP_CLASS[case.modality]
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = case.study_uid
    ds.SeriesInstanceUID = series_uid
    ds.Modality = case.modality
    ds.PatientName = case.patient_name
    ds.PatientID = patient_id
    ds.PatientSex = "M"
    ds.PatientBirthDate = "19650304"
    ds.StudyDescription = "胸部正位" if case.modality == "DX" else "常规心电图"
    ds.InstanceNumber = number
    ds.SeriesNumber = 1
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = DicomBytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def populate(settings: Settings, db: sessionmaker[Session]) -> dict[str, Case]:
    """File every case's instances as its device would send them, then route the routed ones."""
    store = get_store(settings)
    with db() as session:
        inst = {i.code: i for i in session.scalars(select(Institution))}
        senders = {
            key: Sender.of(session.scalar(select(Device).where(Device.ae_title == ae)))
            for key, ae in DEVICE_OF.items()
        }
        session.add(
            User(
                username="stats",
                full_name="统计员",
                password_hash=hash_password("demo"),
                role=Role.STATISTICIAN,
                institution_id=inst[COUNTY].id,
            )
        )
        session.commit()
    result: dict[str, Case] = {}
    for n, template in enumerate(CASES):
        case = result[template.key] = replace(template, study_uid=generate_uid())
        series_uid = generate_uid()
        for number in range(1, case.instances + 1):
            file_instance(
                dicom_bytes(case, series_uid, number, f"P{n:04d}"),
                store=store,
                sessions=db,
                sender=senders[(case.origin, case.modality)],
            )
        with db() as session, session.begin():
            study = session.scalar(select(Study).where(Study.study_uid == case.study_uid))
            case.received_at = study.received_at
            if case.pool is None:
                continue
            study.status = StudyStatus.PROCESSED
            study.processed_at = utcnow()
            study.modalities = case.modality if case.index_modalities else None
            case.due_at = study.received_at + case.due_in
            session.add(
                WorklistItem(
                    study_pk=study.id,
                    pool_id=inst[case.pool].id,
                    priority=case.priority,
                    status=case.status,
                    due_at=case.due_at,
                    routing_rule="test",
                )
            )
    return result


@pytest.fixture
def cases(settings: Settings, db: sessionmaker[Session]) -> dict[str, Case]:
    return populate(settings, db)


@pytest.fixture
def client(settings: Settings, cases: dict[str, Case]) -> TestClient:
    return TestClient(create_app(settings))


def auth(client: TestClient, username: str) -> dict[str, str]:
    # Logging in costs an argon2 verification (~0.2 s); one per user and client is enough.
    tokens: dict[str, str] = client.__dict__.setdefault("rdx_tokens", {})
    if username not in tokens:
        response = client.post(
            "/api/v1/auth/token", data={"username": username, "password": "demo"}
        )
        assert response.status_code == 200, response.text
        tokens[username] = response.json()["access_token"]
    return {"Authorization": f"Bearer {tokens[username]}"}


def expected_order(cases: list[Case]) -> list[str]:
    ordered = sorted(cases, key=lambda c: (RANK[c.priority], c.due_at))
    return [c.study_uid for c in ordered]


def worklist(client: TestClient, username: str, **params) -> dict:
    response = client.get("/api/v1/worklist", headers=auth(client, username), params=params)
    assert response.status_code == 200, response.text
    return response.json()


def routed(cases: dict[str, Case]) -> list[Case]:
    return [c for c in cases.values() if c.pool is not None]


SCOPES = [
    ("county_reader", lambda c: c.pool == COUNTY),
    ("province_reader", lambda c: c.pool == PROVINCE),
    ("tech_xiping", lambda c: c.origin == XIPING),
    ("admin", lambda c: True),
    ("stats", lambda c: False),
]


@pytest.mark.parametrize(("username", "visible"), SCOPES)
def test_each_user_sees_only_their_scope_stat_first_then_by_due(
    client: TestClient, cases: dict[str, Case], username: str, visible
) -> None:
    mine = [c for c in routed(cases) if visible(c)]
    listing = worklist(client, username)
    assert [i["study_uid"] for i in listing["items"]] == expected_order(mine)
    assert listing["total"] == len(mine)


def test_item_fields_decoded_and_in_utc(client: TestClient, cases: dict[str, Case]) -> None:
    items = {i["study_uid"]: i for i in worklist(client, "county_reader")["items"]}
    chest = cases["xp-chest"]
    item = items[chest.study_uid]
    assert item["patient_name"] == "王^小东"  # GB18030 on the wire, '^' kept
    assert items[cases["dh-stat"].study_uid]["patient_name"] == "李^娜"  # ISO_IR 192
    assert item["patient_id"] == "P0000"
    assert item["patient_sex"] == "M"
    assert item["patient_birth_date"] == "19650304"
    assert item["modality"] == "DX"  # from the series: Study.modalities not indexed yet
    assert items[cases["xp-ecg"].study_uid]["modality"] == "ECG"
    assert item["study_description"] == "胸部正位"
    assert item["origin"] == "西坪镇卫生院"
    assert item["pool"] == "西峡县人民医院"
    assert item["priority"] == "routine"
    assert item["status"] == "unread"
    assert item["num_instances"] == 2
    for field, value in (("received_at", chest.received_at), ("due_at", chest.due_at)):
        assert item[field].endswith("Z")
        assert datetime.fromisoformat(item[field]) == value.replace(
            microsecond=value.microsecond // 1000 * 1000
        )


def test_filters_paging_and_total(client: TestClient, cases: dict[str, Case]) -> None:
    county = [c for c in routed(cases) if c.pool == COUNTY]

    def uids(**params) -> list[str]:
        return [i["study_uid"] for i in worklist(client, "county_reader", **params)["items"]]

    assert uids(status="claimed") == expected_order(
        [c for c in county if c.status is WorklistStatus.CLAIMED]
    )
    assert uids(status=["claimed", "unread"]) == expected_order(county)
    assert uids(priority="stat") == expected_order(
        [c for c in county if c.priority is Priority.STAT]
    )
    ecg = expected_order([c for c in county if c.modality == "ECG"])
    assert uids(modality="ECG") == ecg
    assert uids(modality="ecg") == ecg
    assert uids(modality="MR") == []
    assert uids(modality="DX", priority="routine") == expected_order(
        [c for c in county if c.modality == "DX" and c.priority is Priority.ROUTINE]
    )

    everything = expected_order(county)
    page = worklist(client, "county_reader", limit=2, offset=1)
    assert [i["study_uid"] for i in page["items"]] == everything[1:3]
    assert page["total"] == len(county)
    beyond = worklist(client, "county_reader", limit=2, offset=len(county))
    assert beyond == {"items": [], "total": len(county)}


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"status": "lost"}, "query parameter 'status"),
        ({"priority": "asap"}, "query parameter 'priority"),
        ({"limit": 0}, "query parameter 'limit'"),
        ({"limit": 501}, "query parameter 'limit'"),
        ({"limit": "ten"}, "query parameter 'limit'"),
        ({"offset": -1}, "query parameter 'offset'"),
    ],
)
def test_bad_query_parameters_are_422_with_a_message(
    client: TestClient, params: dict, fragment: str
) -> None:
    response = client.get("/api/v1/worklist", headers=auth(client, "county_reader"), params=params)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert isinstance(detail, str)
    assert fragment in detail


def test_one_query_for_rows_regardless_of_page_size(
    client: TestClient, settings: Settings, cases: dict[str, Case]
) -> None:
    headers = auth(client, "admin")
    statements: list[str] = []

    def record(_conn, _cursor, statement, *_args) -> None:
        statements.append(statement)

    engine = get_engine(settings)
    event.listen(engine, "before_cursor_execute", record)
    try:
        counts = []
        for limit in (1, 500):
            statements.clear()
            assert (
                client.get("/api/v1/worklist", headers=headers, params={"limit": limit}).status_code
                == 200
            )
            counts.append(len(statements))
    finally:
        event.remove(engine, "before_cursor_execute", record)
    # user lookup + rows + count, whether the page holds 1 item or all of them.
    assert counts == [3, 3]


def study(client: TestClient, username: str, uid: str):
    return client.get(f"/api/v1/studies/{uid}", headers=auth(client, username))


def test_study_detail(client: TestClient, cases: dict[str, Case]) -> None:
    chest = cases["xp-chest"]
    response = study(client, "county_reader", chest.study_uid)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["study_uid"] == chest.study_uid
    assert body["patient"]["name"] == "王^小东"
    assert body["patient"]["patient_id"] == "P0000"
    assert body["patient"]["issuer"] == XIPING
    assert body["origin"] == "西坪镇卫生院"
    assert body["status"] == "processed"
    assert body["num_instances"] == 2
    assert body["preview_available"] is False
    assert body["validation_problems"] == []
    [series] = body["series"]
    assert series["modality"] == "DX"
    assert [i["instance_number"] for i in series["instances"]] == [1, 2]
    for instance in series["instances"]:
        assert instance["sop_class_uid"] == SOP_CLASS["DX"]
        assert instance["transfer_syntax_uid"] == ExplicitVRLittleEndian
        assert instance["size_bytes"] > 0
    routing = body["worklist_item"]
    assert routing["pool"] == "西峡县人民医院"
    assert routing["priority"] == "routine"
    assert datetime.fromisoformat(routing["due_at"]).replace(microsecond=0) == (
        chest.due_at.replace(microsecond=0)
    )


def test_study_scoping_never_reveals_existence(client: TestClient, cases: dict[str, Case]) -> None:
    consult = cases["dh-consult"].study_uid
    arriving = cases["xp-arriving"].study_uid
    missing = generate_uid()

    foreign = study(client, "county_reader", consult)
    absent = study(client, "county_reader", missing)
    assert foreign.status_code == absent.status_code == 404
    assert foreign.json()["detail"] == f"study {consult} not found"
    assert absent.json()["detail"] == f"study {missing} not found"

    assert study(client, "province_reader", consult).status_code == 200
    assert study(client, "tech_xiping", consult).status_code == 404  # from 丁河, not 西坪
    assert study(client, "stats", consult).status_code == 404

    # Not routed yet: its own township follows it; no reader pool sees it.
    own = study(client, "tech_xiping", arriving)
    assert own.status_code == 200
    assert own.json()["worklist_item"] is None
    assert own.json()["status"] == "receiving"
    assert study(client, "county_reader", arriving).status_code == 404
    assert study(client, "admin", arriving).status_code == 200


def test_malformed_uid_and_no_token(client: TestClient, cases: dict[str, Case]) -> None:
    response = study(client, "admin", "not-a-uid")
    assert response.status_code == 422
    assert "path parameter 'study_uid'" in response.json()["detail"]
    assert study(client, "admin", "1" * 65).status_code == 422
    uid = cases["xp-chest"].study_uid
    assert client.get(f"/api/v1/studies/{uid}").status_code == 401


def test_health_and_readiness(client: TestClient, settings: Settings) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"database": "ok", "storage": "ok", "broker": "ok"}

    # The object store's root replaced by a plain file: nothing can be stored any more.
    shutil.rmtree(settings.storage_dir)
    settings.storage_dir.write_bytes(b"")
    broken = client.get("/readyz")
    assert broken.status_code == 503
    body = broken.json()
    assert body["failing"] == ["storage"]
    assert "storage" in body["detail"]
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["storage"].startswith("StorageUnavailable")

    settings.storage_dir.unlink()
    assert client.get("/readyz").status_code == 200


def test_readiness_names_an_unreachable_broker(settings: Settings, db) -> None:
    dead = settings.model_copy(update={"broker_url": f"redis://127.0.0.1:{free_port()}/0"})
    response = TestClient(create_app(dead)).get("/readyz")
    assert response.status_code == 503
    assert response.json()["failing"] == ["broker"]


def test_openapi_docs(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()
    assert schema["info"]["title"] == "remote_dx"
    assert {"/api/v1/auth/token", "/api/v1/worklist", "/api/v1/studies/{study_uid}"} <= set(
        schema["paths"]
    )


@pytest.mark.postgres
def test_scoping_order_and_detail_on_postgresql(settings: Settings, postgres_database: str) -> None:
    pg = demo_hub_on(settings, postgres_database)
    cases = populate(pg, get_sessionmaker(pg))
    client = TestClient(create_app(pg))
    for username, visible in SCOPES:
        mine = [c for c in routed(cases) if visible(c)]
        listing = worklist(client, username)
        assert [i["study_uid"] for i in listing["items"]] == expected_order(mine), username
        assert listing["total"] == len(mine)
    ecg = [c for c in routed(cases) if c.pool == COUNTY and c.modality == "ECG"]
    assert [
        i["study_uid"] for i in worklist(client, "county_reader", modality="ECG")["items"]
    ] == expected_order(ecg)
    chest = study(client, "county_reader", cases["xp-chest"].study_uid)
    assert chest.status_code == 200
    assert chest.json()["patient"]["name"] == "王^小东"
    assert study(client, "county_reader", cases["dh-consult"].study_uid).status_code == 404
    assert client.get("/readyz").status_code == 200


@pytest.mark.postgres
def test_the_study_read_through_psycopgs_cursor_is_the_sessions(
    settings: Settings, postgres_database: str
) -> None:
    """The study view's PostgreSQL path (psycopg's own cursor, SQLAlchemy's result processing
    applied by hand; one after the other or pipelined) gives every user the user and the
    answers the session path gives: same scoping, same values, times in UTC even when the
    server's time zone is not."""
    from remote_dx.api.deps import _PG_USER_WITH_CODE, _USER_FIELDS
    from remote_dx.core.models import User
    from remote_dx.worklist.service import get_study, get_study_by_cursor, start_study_read

    pg = demo_hub_on(settings, postgres_database)
    sessions = get_sessionmaker(pg)
    cases = populate(pg, sessions)
    engine = get_hot_read_sessionmaker(pg, sum(HOT_READS_AT_ONCE.values())).kw["bind"]
    raw = engine.raw_connection()
    try:
        connection = raw.driver_connection
        connection.autocommit = True
        connection.execute("SET TIME ZONE 'Asia/Shanghai'")
        with sessions() as session, connection.cursor() as cursor:
            compared = 0
            for username, _visible in SCOPES:
                user = session.scalar(select(User).where(User.username == username))
                row = _PG_USER_WITH_CODE.first(cursor, {"user_id": user.id})
                made = User(**{a: getattr(row, k) for k, a in _USER_FIELDS.items()})
                for key in _USER_FIELDS.values():
                    assert getattr(made, key) == getattr(user, key), (username, key)
                for case in cases.values():
                    by_session = get_study(session, user, case.study_uid)
                    by_cursor = get_study_by_cursor(cursor, made, case.study_uid)
                    assert (by_cursor is None) == (by_session is None), (username, case)
                    with connection.pipeline():  # as sent with the user's read
                        started = start_study_read(
                            connection, made.role, made.institution_id, case.study_uid
                        )
                    assert started.detail() == by_cursor
                    if by_cursor is None:
                        continue
                    assert by_cursor.received_at.utcoffset() == timedelta(0)
                    assert by_cursor == by_session
                    assert by_cursor.model_dump_json() == by_session.model_dump_json()
                    compared += 1
    finally:
        raw.invalidate()  # its time zone is not the pool's
        raw.close()
    assert compared >= 8


@pytest.mark.postgres
def test_a_study_view_sent_with_the_users_read_obeys_the_fresh_user_row(
    settings: Settings, postgres_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader's next study view goes in one pipelined round trip with their user row, scoped
    as they were at their last view; when an administrator has moved them to another pool in
    between, the fresh row decides: the old pool's study is 404 and the new pool's is 200."""
    from psycopg import pq

    from remote_dx.core.models import User
    from remote_dx.core.psycopg_statements import PsycopgQuery

    pg = demo_hub_on(settings, postgres_database)
    sessions = get_sessionmaker(pg)
    cases = populate(pg, sessions)
    client = TestClient(create_app(pg))
    county_study = cases["xp-chest"].study_uid
    province_study = next(c.study_uid for c in routed(cases) if c.pool == PROVINCE)
    sent: list[tuple[str, bool]] = []
    execute = PsycopgQuery._execute

    def spied(query, cursor, values) -> None:
        pipelined = cursor.connection.pgconn.pipeline_status != pq.PipelineStatus.OFF
        sent.append((query.sql.split("FROM ")[1].split()[0], pipelined))
        execute(query, cursor, values)

    monkeypatch.setattr(PsycopgQuery, "_execute", spied)
    assert study(client, "county_reader", county_study).status_code == 200
    assert study(client, "county_reader", province_study).status_code == 404
    sent.clear()
    assert study(client, "county_reader", county_study).status_code == 200
    assert sent == [("users", True), ("studies", True), ("series", True)]

    with sessions() as session:  # the administrator moves the reader to the province's pool
        reader = session.scalar(select(User).where(User.username == "county_reader"))
        reader.institution_id = session.scalar(
            select(Institution.id).where(Institution.code == PROVINCE)
        )
        session.commit()
    sent.clear()
    assert study(client, "county_reader", county_study).status_code == 404
    # Sent for the old pool, then read again for the new one.
    assert [table for table, _ in sent] == ["users", "studies", "series", "studies"]
    assert study(client, "county_reader", province_study).status_code == 200


@pytest.mark.postgres
def test_hot_reads_keep_prepared_statements_and_plan_filtered_pages_per_value(
    settings: Settings, postgres_database: str
) -> None:
    """The worklist page and the study view end their transactions with COMMIT, so psycopg
    keeps the statements it prepared (a rollback deallocates them all); a page whose plan
    depends on its filter values (patient, dates) is not given the generic plan."""
    pg = demo_hub_on(settings, postgres_database)
    cases = populate(pg, get_sessionmaker(pg))
    client = TestClient(create_app(pg))
    headers = auth(client, "county_reader")
    settings_applied: list[str] = []
    engine = get_hot_read_sessionmaker(pg, sum(HOT_READS_AT_ONCE.values())).kw["bind"]

    def note_plan_settings(conn, cursor, statement, *args) -> None:
        if "join_collapse_limit" in statement:
            settings_applied.append(statement)

    event.listen(engine, "before_cursor_execute", note_plan_settings)
    try:
        for _ in range(7):  # psycopg prepares a statement on its 5th run on a connection
            assert client.get("/api/v1/worklist", headers=headers).status_code == 200
            chest = client.get(f"/api/v1/studies/{cases['xp-chest'].study_uid}", headers=headers)
            assert chest.status_code == 200
        assert settings_applied and all("force_generic_plan" in s for s in settings_applied)
        settings_applied.clear()
        by_patient = client.get(
            "/api/v1/worklist",
            headers=headers,
            params={"patient": "王", "received_from": "2020-01-01"},
        )
        assert by_patient.status_code == 200
        assert settings_applied and "force_generic_plan" not in settings_applied[-1]
    finally:
        event.remove(engine, "before_cursor_execute", note_plan_settings)
    connections = [engine.connect() for _ in range(engine.pool.checkedin())]
    try:
        prepared = sum(
            c.scalar(text("SELECT count(*) FROM pg_prepared_statements")) for c in connections
        )
    finally:
        for connection in connections:
            connection.close()
    assert prepared >= 3  # the user, the page, the study (and its series) statements


def test_database_down_is_503_with_a_message(settings: Settings) -> None:
    dead = settings.model_copy(
        update={"database_url": f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/none"}
    )
    client = TestClient(create_app(dead))
    login = client.post("/api/v1/auth/token", data={"username": "admin", "password": "demo"})
    assert login.status_code == 503
    assert login.json() == {"detail": "the database is unavailable right now; retry shortly"}
    assert login.headers["retry-after"]
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["failing"] == ["database"]


# --- issue 4: more filters, sorts, counts ---------------------------------------------------------


def test_filters_by_patient_origin_received_range_and_section(
    client: TestClient, settings: Settings, cases: dict[str, Case]
) -> None:
    county = [c for c in routed(cases) if c.pool == COUNTY]

    def uids(username: str = "county_reader", **params) -> list[str]:
        return [i["study_uid"] for i in worklist(client, username, **params)["items"]]

    # Part of a Chinese name (decoded from GB18030 / UTF-8), the whole name, or the exact ID.
    assert uids(patient="小东") == [cases["xp-chest"].study_uid]
    assert uids(patient="李^娜") == [cases["dh-stat"].study_uid]
    assert uids(patient="P0002") == [cases["xp-ecg"].study_uid]
    assert uids(patient="P000") == []  # IDs match exactly, not by prefix
    assert uids(patient="%") == []  # LIKE wildcards are literal
    assert uids("admin", patient="陈") == [cases["xp-ecg-stat"].study_uid]
    assert uids("province_reader", patient="小东") == []  # still scoped

    assert uids(origin="DINGHE") == expected_order([c for c in county if c.origin == DINGHE])
    assert uids(origin=["xiping", "DINGHE"]) == expected_order(county)
    assert uids(origin="NOWHERE") == []

    ordered = sorted(county, key=lambda c: c.received_at)
    middle = ordered[len(ordered) // 2].received_at
    assert uids(received_from=middle.isoformat()) == expected_order(
        [c for c in county if c.received_at >= middle]
    )
    assert uids(received_to=middle.isoformat()) == expected_order(
        [c for c in county if c.received_at < middle]
    )
    today = clock.to_shanghai(clock.utcnow()).date()
    assert uids(received_from=today.isoformat()) == expected_order(county)
    assert uids(received_to=today.isoformat()) == []
    bad = client.get(
        "/api/v1/worklist", headers=auth(client, "county_reader"), params={"received_from": "x"}
    )
    assert bad.status_code == 422 and "received_from" in bad.json()["detail"]

    with get_sessionmaker(settings)() as session, session.begin():
        item = session.scalar(
            select(WorklistItem).join(Study).where(Study.study_uid == cases["dh-stat"].study_uid)
        )
        item.section = "chest"
    assert uids(section="chest") == [cases["dh-stat"].study_uid]
    listed = {i["study_uid"]: i for i in worklist(client, "county_reader")["items"]}
    assert listed[cases["dh-stat"].study_uid]["section"] == "chest"
    assert listed[cases["xp-chest"].study_uid]["section"] is None


def test_sorts(client: TestClient, cases: dict[str, Case]) -> None:
    county = [c for c in routed(cases) if c.pool == COUNTY]

    def uids(sort: str) -> list[str]:
        return [i["study_uid"] for i in worklist(client, "county_reader", sort=sort)["items"]]

    assert uids("priority,due_at") == expected_order(county)
    assert uids("due_at") == [c.study_uid for c in sorted(county, key=lambda c: c.due_at)]
    by_received = [c.study_uid for c in sorted(county, key=lambda c: c.received_at)]
    assert uids("received_at") == by_received
    assert uids("-received_at") == by_received[::-1]
    bad = client.get(
        "/api/v1/worklist", headers=auth(client, "county_reader"), params={"sort": "name"}
    )
    assert bad.status_code == 422 and "sort" in bad.json()["detail"]


def test_counts_overdue_flag_and_lease_fields(
    client: TestClient, settings: Settings, cases: dict[str, Case]
) -> None:
    county = [c for c in routed(cases) if c.pool == COUNTY]
    for username in ("tech_xiping", "stats"):  # log in before the clock moves (pyjwt's iat)
        auth(client, username)
    response = client.get("/api/v1/worklist/counts", headers=auth(client, "county_reader"))
    assert response.status_code == 200, response.text
    counts = response.json()
    expected = {s.value: sum(c.status is s for c in county) for s in WorklistStatus}
    assert counts == {"by_status": expected, "overdue": 0, "total": len(county)}

    # Once the STAT item's 30 minutes are over it is overdue, in the counts and on the list.
    clock.advance(timedelta(minutes=31))
    late = client.get(
        "/api/v1/worklist/counts", headers=auth(client, "county_reader"), params={"modality": "DX"}
    ).json()
    assert late["overdue"] == 1
    assert late["total"] == sum(c.modality == "DX" for c in county)
    items = {i["study_uid"]: i for i in worklist(client, "county_reader")["items"]}
    assert items[cases["dh-stat"].study_uid]["overdue"] is True
    assert items[cases["xp-chest"].study_uid]["overdue"] is False
    assert [i["study_uid"] for i in worklist(client, "county_reader", overdue="true")["items"]] == [
        cases["dh-stat"].study_uid
    ]
    item = items[cases["xp-chest"].study_uid]
    assert (item["claimed_by"], item["lease_expires_at"], item["escalation_level"]) == (
        None,
        None,
        0,
    )
    assert item["version"] == 0
    township = client.get("/api/v1/worklist/counts", headers=auth(client, "tech_xiping")).json()
    assert township["total"] == sum(c.origin == XIPING for c in routed(cases))
    assert client.get("/api/v1/worklist/counts", headers=auth(client, "stats")).json()["total"] == 0


def test_counts_and_filtered_lists_stay_at_three_queries(
    client: TestClient, settings: Settings, cases: dict[str, Case]
) -> None:
    headers = auth(client, "county_reader")
    statements: list[str] = []

    def record(_conn, _cursor, statement, *_args) -> None:
        statements.append(statement)

    engine = get_engine(settings)
    event.listen(engine, "before_cursor_execute", record)
    try:
        statements.clear()
        params = {"patient": "王", "origin": "XIPING", "sort": "-received_at", "limit": 500}
        assert client.get("/api/v1/worklist", headers=headers, params=params).status_code == 200
        listed = len(statements)
        statements.clear()
        assert client.get("/api/v1/worklist/counts", headers=headers).status_code == 200
        counted = len(statements)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert (listed, counted) == (3, 2)  # user + rows + count; user + one grouped count


def test_a_hot_read_runs_in_its_request_context() -> None:
    """run_hot hands the request's context variables (request id, study, user of the log
    lines) to the worker thread, and runs no more of a kind at once than its slots."""
    from remote_dx.api.deps import run_hot
    from remote_dx.ops.logging import request_id_var

    running: list[int] = []
    most = 0
    lock = threading.Lock()

    def read(n: int) -> tuple[int, str | None]:
        nonlocal most
        with lock:
            running.append(n)
            most = max(most, len(running))
        time.sleep(0.01)
        with lock:
            running.remove(n)
        return n, request_id_var.get()

    async def requests() -> list[tuple[int, str | None]]:
        async def one(n: int) -> tuple[int, str | None]:
            request_id_var.set(f"req-{n}")
            return await run_hot("study", read, n)

        return await asyncio.gather(*(one(n) for n in range(12)))

    assert asyncio.run(requests()) == [(n, f"req-{n}") for n in range(12)]
    assert most == HOT_READS_AT_ONCE["study"]
