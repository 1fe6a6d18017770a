"""Escalation (issue 4): consultation requests and answers with their permissions, both opinions
kept; automatic escalation of overdue studies with a controllable clock — one level up, recorded,
visible in the new pool's worklist and not the old one's, idempotent under concurrent sweeps,
claimed-but-unsigned items too, flagged once at the top of the tree."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from remote_dx.api.app import create_app
from remote_dx.core import clock
from remote_dx.core.db import get_sessionmaker, session_scope
from remote_dx.core.migrate import upgrade
from remote_dx.core.models import (
    Consultation,
    Institution,
    Patient,
    Priority,
    Role,
    RoutingDecision,
    RoutingDecisionKind,
    Study,
    StudyStatus,
    User,
    WorklistItem,
    WorklistStatus,
)
from remote_dx.core.network import apply_network, load_network_file
from remote_dx.core.security import hash_password
from remote_dx.core.settings import Settings, reset_settings
from remote_dx.routing.escalation import escalate_overdue
from remote_dx.routing.route import clear_rules_cache, route_study
from remote_dx.tasks import Sweeper
from tests.support import DEMO_NETWORK

COUNTY, CITY, PROVINCE, XIPING = "XXXRMYY", "NYSZXYY", "HNSRMYY", "XIPING"
USERS = ("county_reader", "city_reader", "province_reader", "tech_xiping", "admin")


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    clear_rules_cache()


@pytest.fixture
def network(db: sessionmaker[Session]) -> sessionmaker[Session]:
    """The demo network plus a reader at the city centre."""
    with db() as session, session.begin():
        city = session.scalar(select(Institution).where(Institution.code == CITY))
        session.add(
            User(
                username="city_reader",
                full_name="市医院诊断医师",
                password_hash=hash_password("demo"),
                role=Role.READER,
                institution_id=city.id,
                modalities=["DX", "ECG"],
                title="副主任医师",
            )
        )
    return db


def new_study(
    db: sessionmaker[Session],
    modality: str = "DX",
    priority: Priority | None = None,
    origin: str = XIPING,
) -> str:
    """A processed study from a township, routed by the (default) rules as the pipeline would."""
    with db() as session, session.begin():
        source = session.scalar(select(Institution).where(Institution.code == origin))
        study = Study(
            study_uid=f"2.25.{uuid.uuid4().int}",
            patient=Patient(issuer=origin, patient_id=uuid.uuid4().hex[:12], name="张^伟"),
            origin=source,
            modalities=modality,
            description="胸部正位" if modality == "DX" else "常规心电图",
            status=StudyStatus.PROCESSED,
            received_at=clock.utcnow(),
        )
        session.add(study)
        session.flush()
        route_study(session, study, modalities=[modality], priority=priority)
        return study.study_uid


def item_of(db: sessionmaker[Session], uid: str) -> WorklistItem:
    with db() as session:
        item = session.scalar(select(WorklistItem).join(Study).where(Study.study_uid == uid))
        assert item is not None
        session.expunge(item)
        return item


def pool_code(db: sessionmaker[Session], item: WorklistItem) -> str:
    with db() as session:
        return session.get(Institution, item.pool_id).code


def decisions(db: sessionmaker[Session], uid: str) -> list[RoutingDecision]:
    with db() as session:
        rows = session.scalars(
            select(RoutingDecision)
            .join(Study, Study.id == RoutingDecision.study_pk)
            .where(Study.study_uid == uid)
            .order_by(RoutingDecision.id)
        ).all()
        for row in rows:
            session.expunge(row)
        return list(rows)


@pytest.fixture
def client(settings: Settings, network: sessionmaker[Session]) -> TestClient:
    # pyjwt checks "issued at" on the real clock and the hub checks expiry on the test clock:
    # tests log in before moving the clock, with tokens that outlive the moves.
    client = TestClient(create_app(settings.model_copy(update={"access_token_minutes": 10_080})))
    for user in USERS:
        auth(client, user)
    return client


def auth(client: TestClient, username: str) -> dict[str, str]:
    tokens: dict[str, str] = client.__dict__.setdefault("rdx_tokens", {})
    key = username
    if key not in tokens:
        response = client.post(
            "/api/v1/auth/token", data={"username": username, "password": "demo"}
        )
        assert response.status_code == 200, response.text
        tokens[key] = response.json()["access_token"]
    return {"Authorization": f"Bearer {tokens[key]}"}


def worklist_uids(client: TestClient, username: str) -> set[str]:
    response = client.get("/api/v1/worklist", headers=auth(client, username))
    assert response.status_code == 200, response.text
    return {item["study_uid"] for item in response.json()["items"]}


# --- consultation (会诊) --------------------------------------------------------------------------


def test_consultation_request_and_answer(
    client: TestClient, network: sessionmaker[Session]
) -> None:
    uid = new_study(network, "ECG")
    before = item_of(network, uid)
    url = f"/api/v1/studies/{uid}/consultations"
    body = {"question": "ST段改变是否考虑急性心梗?", "opinion": "考虑下壁心肌缺血"}

    # Not a reader of the study's pool: the township technician (sees the study) → 403; a
    # reader of another pool (does not see it) → 404; the province cannot "consult" itself.
    assert client.post(url, json=body, headers=auth(client, "tech_xiping")).status_code == 403
    assert client.post(url, json=body, headers=auth(client, "city_reader")).status_code == 404
    assert client.post(url, json=body, headers=auth(client, "province_reader")).status_code == 404
    empty = client.post(url, json={"question": ""}, headers=auth(client, "county_reader"))
    assert empty.status_code == 422

    asked = client.post(url, json=body, headers=auth(client, "county_reader"))
    assert asked.status_code == 201, asked.text
    consultation = asked.json()
    assert (consultation["from_pool"]["code"], consultation["to_pool"]["code"]) == (
        COUNTY,
        PROVINCE,
    )
    assert consultation["status"] == "open" and consultation["requested_by"] == "县医院诊断医师"

    moved = item_of(network, uid)
    assert pool_code(network, moved) == PROVINCE
    assert (moved.escalation_level, moved.status) == (1, WorklistStatus.UNREAD)
    assert moved.claimed_by_id is None and moved.lease_expires_at is None
    assert moved.escalated_at is not None and moved.version > before.version
    # Due by the consultation SLA (routine: 8 h) from the request.
    assert moved.due_at - moved.escalated_at == timedelta(hours=8)
    assert uid in worklist_uids(client, "province_reader")
    assert uid not in worklist_uids(client, "county_reader")

    again = client.post(url, json=body, headers=auth(client, "province_reader"))
    assert again.status_code == 409  # one open consultation at a time (and no pool above)

    answer_url = f"{url}/{consultation['id']}/answer"
    answer = {"answer": "下壁导联ST段抬高, 符合急性下壁心梗, 建议立即转诊胸痛中心"}
    assert (
        client.post(answer_url, json=answer, headers=auth(client, "county_reader")).status_code
        == 403
    )
    assert (
        client.post(answer_url, json=answer, headers=auth(client, "city_reader")).status_code == 404
    )
    answered = client.post(answer_url, json=answer, headers=auth(client, "province_reader"))
    assert answered.status_code == 200, answered.text
    assert answered.json()["status"] == "answered"
    assert (
        client.post(answer_url, json=answer, headers=auth(client, "province_reader")).status_code
        == 409
    )

    # Both opinions are kept and shown — to the county reader who asked too, and to the township.
    for user in ("county_reader", "province_reader", "tech_xiping", "admin"):
        shown = client.get(url, headers=auth(client, user))
        assert shown.status_code == 200, (user, shown.text)
        [row] = shown.json()
        assert (row["question"], row["requester_opinion"]) == (body["question"], body["opinion"])
        assert (row["answer"], row["answered_by"]) == (answer["answer"], "省医院诊断医师")
    assert client.get(url, headers=auth(client, "city_reader")).status_code == 404

    history = client.get(f"/api/v1/studies/{uid}/routing", headers=auth(client, "county_reader"))
    assert history.status_code == 200, history.text
    kinds = [
        (d["kind"], d["from_pool"] and d["from_pool"]["code"], d["pool"]["code"])
        for d in history.json()
    ]
    assert kinds == [("initial", None, COUNTY), ("consultation", COUNTY, PROVINCE)]
    assert history.json()[1]["decided_by"] == "县医院诊断医师"


def test_consultation_to_a_chosen_pool_and_not_after_signing(
    client: TestClient, network: sessionmaker[Session]
) -> None:
    uid = new_study(network)
    url = f"/api/v1/studies/{uid}/consultations"
    reader = auth(client, "county_reader")
    wrong = client.post(url, json={"question": "?", "to_pool": "DINGHE"}, headers=reader)
    assert wrong.status_code == 422 and "not an institution above" in wrong.json()["detail"]
    to_city = client.post(url, json={"question": "请市级会诊", "to_pool": CITY}, headers=reader)
    assert to_city.status_code == 201 and to_city.json()["to_pool"]["code"] == CITY

    signed = new_study(network)
    with network() as session, session.begin():
        session.execute(
            update(WorklistItem)
            .where(WorklistItem.id == item_of(network, signed).id)
            .values(status=WorklistStatus.SIGNED)
        )
    late = client.post(
        f"/api/v1/studies/{signed}/consultations", json={"question": "?"}, headers=reader
    )
    assert late.status_code == 409


# --- automatic escalation -------------------------------------------------------------------------


def test_overdue_unclaimed_study_escalates_one_level(
    client: TestClient, network: sessionmaker[Session]
) -> None:
    uid = new_study(network, "DX")  # routine X-ray: due in 24 h at the county
    on_time = new_study(network, "DX")
    first = item_of(network, uid)
    clock.advance(timedelta(hours=23, minutes=59))
    assert escalate_overdue(network) == []

    clock.advance(timedelta(minutes=2))
    with network() as session, session.begin():  # a fresh study is not due yet
        session.execute(
            update(WorklistItem)
            .where(WorklistItem.id == item_of(network, on_time).id)
            .values(due_at=clock.utcnow() + timedelta(hours=1))
        )
    assert escalate_overdue(network) == [uid]
    moved = item_of(network, uid)
    assert pool_code(network, moved) == CITY
    assert (moved.escalation_level, moved.status) == (1, WorklistStatus.UNREAD)
    # New due time: the regular routine imaging SLA, from the escalation.
    assert moved.due_at - moved.escalated_at == timedelta(hours=24)
    assert moved.version > first.version
    *_, escalation = decisions(network, uid)
    assert escalation.kind is RoutingDecisionKind.ESCALATION
    assert escalation.rule == "auto-escalation/overdue"
    assert escalation.detail["reason"] == "not claimed by its due time"
    assert escalation.detail["level"] == 1

    assert uid in worklist_uids(client, "city_reader")
    assert uid not in worklist_uids(client, "county_reader")
    assert on_time in worklist_uids(client, "county_reader")
    with network() as session, session.begin():  # read in time: out of the rest of the story
        session.execute(
            update(WorklistItem)
            .where(WorklistItem.id == item_of(network, on_time).id)
            .values(status=WorklistStatus.SIGNED)
        )
    # The county reader keeps the study's routing history.
    seen = client.get(f"/api/v1/studies/{uid}/routing", headers=auth(client, "county_reader"))
    assert [d["kind"] for d in seen.json()] == ["initial", "escalation"]

    # Idempotent: nothing more until the new due time passes; then city → province; then the
    # top of the tree is flagged once and the study stays.
    assert escalate_overdue(network) == []
    clock.advance(timedelta(hours=24, minutes=1))
    assert escalate_overdue(network) == [uid]
    assert pool_code(network, item_of(network, uid)) == PROVINCE
    clock.advance(timedelta(hours=24, minutes=1))
    assert escalate_overdue(network) == []
    top = item_of(network, uid)
    assert (pool_code(network, top), top.escalation_level) == (PROVINCE, 2)
    assert escalate_overdue(network) == []
    rows = [(d.kind, d.rule, d.detail.get("at_top")) for d in decisions(network, uid)]
    assert rows == [
        (RoutingDecisionKind.INITIAL, "lead-hospital/imaging/routine(default)", None),
        (RoutingDecisionKind.ESCALATION, "auto-escalation/overdue", False),
        (RoutingDecisionKind.ESCALATION, "auto-escalation/overdue", False),
        (RoutingDecisionKind.ESCALATION, "auto-escalation/at-top", True),
    ]


def test_claimed_but_unsigned_study_escalates_and_loses_its_lease(
    network: sessionmaker[Session],
) -> None:
    uid = new_study(network, "ECG", Priority.STAT)  # STAT ECG: due in 10 minutes
    with network() as session, session.begin():
        reader = session.scalar(select(User).where(User.username == "county_reader"))
        session.execute(
            update(WorklistItem)
            .where(WorklistItem.id == item_of(network, uid).id)
            .values(
                status=WorklistStatus.DRAFTED,
                claimed_by_id=reader.id,
                claimed_at=clock.utcnow(),
                lease_expires_at=clock.utcnow() + timedelta(hours=1),
                version=WorklistItem.version + 1,
            )
        )
    clock.advance(timedelta(minutes=11))
    assert escalate_overdue(network) == [uid]
    item = item_of(network, uid)
    assert pool_code(network, item) == CITY
    assert item.status is WorklistStatus.UNREAD
    assert (item.claimed_by_id, item.claimed_at, item.lease_expires_at) == (None, None, None)
    assert item.due_at - item.escalated_at == timedelta(minutes=10)  # STAT ECG SLA again
    *_, escalation = decisions(network, uid)
    assert escalation.detail["reason"] == "not signed by its due time"
    assert escalation.detail["status_was"] == "drafted"

    signed = new_study(network, "ECG", Priority.STAT)
    with network() as session, session.begin():
        session.execute(
            update(WorklistItem)
            .where(WorklistItem.id == item_of(network, signed).id)
            .values(status=WorklistStatus.SIGNED)
        )
    clock.advance(timedelta(minutes=11))
    escalated = escalate_overdue(network)
    assert signed not in escalated  # signed in time or late: never escalated


def concurrent_sweeps(db: sessionmaker[Session]) -> None:
    uids = [new_study(db, "ECG") for _ in range(8)]
    clock.advance(timedelta(hours=2, minutes=1))
    results: list[list[str]] = []
    barrier = threading.Barrier(3)

    def sweep() -> None:
        barrier.wait()
        results.append(escalate_overdue(db))

    threads = [threading.Thread(target=sweep) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(results) == 3
    moved = [uid for result in results for uid in result]
    assert sorted(moved) == sorted(uids)  # each exactly once across the three sweepers
    with db() as session:
        counts = dict(
            session.execute(
                select(Study.study_uid, func.count(RoutingDecision.id))
                .join(RoutingDecision, RoutingDecision.study_pk == Study.id)
                .where(RoutingDecision.kind == RoutingDecisionKind.ESCALATION)
                .group_by(Study.study_uid)
            ).all()
        )
        levels = set(session.scalars(select(WorklistItem.escalation_level)).all())
    assert counts == dict.fromkeys(uids, 1)
    assert levels == {1}


def test_concurrent_sweeps_escalate_each_study_once(network: sessionmaker[Session]) -> None:
    concurrent_sweeps(network)


@pytest.mark.postgres
def test_concurrent_sweeps_on_postgresql(
    settings: Settings, postgres_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RDX_DATABASE_URL", postgres_database)
    reset_settings()
    pg = settings.model_copy(update={"database_url": postgres_database})
    upgrade(pg)
    with session_scope(pg) as session:
        apply_network(session, load_network_file(DEMO_NETWORK), with_passwords=False)
    concurrent_sweeps(get_sessionmaker(pg))


def test_the_sweeper_escalates(settings: Settings, network: sessionmaker[Session]) -> None:
    uid = new_study(network, "ECG", Priority.URGENT)  # urgent ECG: 30 minutes
    clock.advance(timedelta(minutes=31))
    result = Sweeper(settings, enqueue=lambda _uid: True).run_once()
    assert result.escalated == [uid]
    with network() as session:
        open_consultations = session.scalar(select(func.count(Consultation.id)))
    assert open_consultations == 0  # automatic escalation is a routing decision, not a 会诊
