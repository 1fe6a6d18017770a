"""The reading lease (issue 4, "claim with a lease; release; reassign by a supervisor"): claim,
409 naming the holder, renew, release, expiry on a moved clock and by the sweep, reassignment,
qualifications (modality, section, role), the CAS race on SQLite and PostgreSQL, and the
functions the reporting module calls (mark_drafted / mark_signed).
"""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from remote_dx.api.app import create_app
from remote_dx.core import clock
from remote_dx.core.db import get_sessionmaker
from remote_dx.core.models import (
    Institution,
    Role,
    RoutingDecision,
    RoutingDecisionKind,
    Study,
    User,
    WorklistItem,
    WorklistStatus,
)
from remote_dx.core.security import hash_password
from remote_dx.core.settings import Settings
from remote_dx.worklist.lease import expire_leases, mark_drafted, mark_signed
from tests.support import demo_hub_on
from tests.test_api_worklist import COUNTY, Case, auth, populate

LEASE_MINUTES = 15


def add_reader(
    sessions: sessionmaker[Session],
    username: str,
    modalities: list[str],
    *,
    role: Role = Role.READER,
    institution: str = COUNTY,
    sections: list[str] | None = None,
) -> None:
    with sessions() as session, session.begin():
        inst = session.scalar(select(Institution).where(Institution.code == institution))
        session.add(
            User(
                username=username,
                full_name=f"{username} 医师",
                password_hash=hash_password("demo"),
                role=role,
                institution_id=inst.id,
                modalities=modalities,
                sections=sections or [],
            )
        )


@pytest.fixture
def cases(settings: Settings, db: sessionmaker[Session]) -> dict[str, Case]:
    result = populate(settings, db)
    add_reader(db, "county_reader2", ["DX", "CR", "ECG"])
    add_reader(db, "county_dx_only", ["DX", "CR"])
    return result


@pytest.fixture
def client(settings: Settings, cases: dict[str, Case]) -> TestClient:
    client = TestClient(create_app(settings))
    # Tokens are made now: one minted after core.clock.advance() would not be valid yet (iat).
    for name in ("county_reader", "county_reader2", "county_dx_only", "county_supervisor"):
        auth(client, name)
    return client


def post(client: TestClient, username: str, uid: str, action: str, **body):
    return client.post(
        f"/api/v1/worklist/{uid}/{action}",
        headers=auth(client, username),
        json=body or None,
    )


def item_of(sessions: sessionmaker[Session], uid: str) -> WorklistItem:
    with sessions() as session:
        return session.scalar(
            select(WorklistItem).join(Study, Study.id == WorklistItem.study_pk)
            .where(Study.study_uid == uid)
        )  # fmt: skip


def test_claim_conflict_renew_release(
    client: TestClient, db: sessionmaker[Session], cases: dict[str, Case]
) -> None:
    uid = cases["xp-chest"].study_uid
    before = item_of(db, uid).version
    claimed = post(client, "county_reader", uid, "claim")
    assert claimed.status_code == 200, claimed.text
    body = claimed.json()
    assert body["status"] == "claimed"
    assert body["claimed_by"] == {"username": "county_reader", "full_name": "县医院诊断医师"}
    expires = clock.utcnow() + timedelta(minutes=LEASE_MINUTES)
    got = item_of(db, uid)
    assert abs((got.lease_expires_at - expires).total_seconds()) < 5
    assert body["lease_expires_at"].endswith("Z")
    assert got.version == body["version"] == before + 1

    # The list shows who holds it.
    listing = client.get("/api/v1/worklist", headers=auth(client, "county_reader2")).json()
    row = next(i for i in listing["items"] if i["study_uid"] == uid)
    assert row["claimed_by"] == "县医院诊断医师"
    assert row["status"] == "claimed"
    assert row["version"] == body["version"]

    second = post(client, "county_reader2", uid, "claim")
    assert second.status_code == 409
    conflict = second.json()
    assert conflict["claimed_by"]["username"] == "county_reader"
    assert "县医院诊断医师" in conflict["detail"]
    assert conflict["lease_expires_at"] == body["lease_expires_at"]

    # Another reader can neither renew nor release it.
    assert post(client, "county_reader2", uid, "renew").status_code == 409
    assert post(client, "county_reader2", uid, "release").status_code == 403

    clock.advance(timedelta(minutes=10))
    renewed = post(client, "county_reader", uid, "renew")
    assert renewed.status_code == 200
    assert renewed.json()["lease_expires_at"] > body["lease_expires_at"]
    assert renewed.json()["claimed_at"] == body["claimed_at"]  # still the same claim
    assert renewed.json()["version"] == body["version"] + 1
    # Claiming one's own item again is a renewal, not a conflict.
    assert post(client, "county_reader", uid, "claim").status_code == 200

    released = post(client, "county_reader", uid, "release")
    assert released.status_code == 200
    assert released.json()["status"] == "unread"
    assert released.json()["claimed_by"] is None
    assert post(client, "county_reader2", uid, "claim").status_code == 200


def test_an_expired_lease_is_free_and_the_sweep_resets_it(
    client: TestClient, db: sessionmaker[Session], cases: dict[str, Case]
) -> None:
    uid, other = cases["xp-chest"].study_uid, cases["dh-routine-2"].study_uid
    assert post(client, "county_reader", uid, "claim").status_code == 200
    assert post(client, "county_reader", other, "claim").status_code == 200

    clock.advance(timedelta(minutes=LEASE_MINUTES, seconds=1))
    # No sweep yet: the claim itself sees that the lease ran out.
    taken = post(client, "county_reader2", uid, "claim")
    assert taken.status_code == 200, taken.text
    assert taken.json()["claimed_by"]["username"] == "county_reader2"
    assert post(client, "county_reader", uid, "renew").status_code == 409  # lost it

    version = item_of(db, other).version
    assert expire_leases(db) == [other]
    freed = item_of(db, other)
    assert (freed.status, freed.claimed_by_id, freed.lease_expires_at) == (
        WorklistStatus.UNREAD,
        None,
        None,
    )
    assert freed.version == version + 1
    assert item_of(db, uid).claimed_by_id is not None  # the fresh claim is untouched
    assert expire_leases(db) == []


def test_reassign_by_a_supervisor_only(
    client: TestClient, db: sessionmaker[Session], cases: dict[str, Case]
) -> None:
    uid = cases["xp-ecg"].study_uid  # an ECG
    assert post(client, "county_reader", uid, "claim").status_code == 200

    refused = post(client, "county_reader2", uid, "reassign", user="county_reader2")
    assert refused.status_code == 403
    assert "supervisor" in refused.json()["detail"]

    unqualified = post(client, "county_supervisor", uid, "reassign", user="county_dx_only")
    assert unqualified.status_code == 403
    assert "ECG" in unqualified.json()["detail"]
    assert post(client, "county_supervisor", uid, "reassign", user="nobody").status_code == 404
    foreign = post(client, "county_supervisor", uid, "reassign", user="province_reader")
    assert foreign.status_code == 403

    moved = post(client, "county_supervisor", uid, "reassign", user="county_reader2")
    assert moved.status_code == 200, moved.text
    assert moved.json()["claimed_by"]["username"] == "county_reader2"
    with db() as session:
        decision = session.scalar(
            select(RoutingDecision).where(RoutingDecision.kind == RoutingDecisionKind.REASSIGNMENT)
        )
        assert decision.rule == "reassigned-to:county_reader2"
        assert decision.detail == {"from_reader": "county_reader", "to_reader": "county_reader2"}
        supervisor = session.scalar(select(User).where(User.username == "county_supervisor"))
        assert decision.decided_by_id == supervisor.id
    # The supervisor may also release someone else's claim.
    assert post(client, "county_supervisor", uid, "release").json()["claimed_by"] is None


def test_qualifications_roles_and_scope(
    client: TestClient, db: sessionmaker[Session], cases: dict[str, Case]
) -> None:
    ecg, chest = cases["xp-ecg"].study_uid, cases["xp-chest"].study_uid
    refused = post(client, "county_dx_only", ecg, "claim")
    assert refused.status_code == 403
    assert "not qualified to read ECG" in refused.json()["detail"]
    assert post(client, "county_dx_only", chest, "claim").status_code == 200

    technician = post(client, "tech_xiping", cases["xp-chest"].study_uid, "claim")
    assert technician.status_code == 403
    assert "technician" in technician.json()["detail"]
    assert post(client, "admin", chest, "claim").status_code == 403
    # Another pool's study does not exist for this reader.
    assert post(client, "county_reader", cases["dh-consult"].study_uid, "claim").status_code == 404
    assert post(client, "county_reader", "1.2.3.999", "claim").status_code == 404
    assert post(client, "county_reader", "not-a-uid", "claim").status_code == 422

    # A section item needs a reader of that section.
    with db() as session, session.begin():
        item = session.scalar(
            select(WorklistItem).join(Study).where(Study.study_uid == cases["dh-stat"].study_uid)
        )
        item.section = "chest"
    add_reader(db, "chest_reader", ["DX"], sections=["chest"])
    stat = cases["dh-stat"].study_uid
    assert post(client, "county_reader", stat, "claim").status_code == 403
    assert post(client, "chest_reader", stat, "claim").status_code == 200


def test_reporting_hooks(client: TestClient, db: sessionmaker[Session], cases: dict[str, Case]):
    uid = cases["xp-chest"].study_uid
    assert post(client, "county_reader", uid, "claim").status_code == 200
    claimed = item_of(db, uid)
    with db() as session, session.begin():
        reader = session.scalar(select(User).where(User.username == "county_reader"))
        clock.advance(timedelta(minutes=5))
        assert mark_drafted(
            session, claimed.study_pk, by_user_id=reader.id, lease=timedelta(minutes=15)
        )
    drafted = item_of(db, uid)
    assert drafted.status is WorklistStatus.DRAFTED
    assert drafted.version == claimed.version + 1
    assert drafted.lease_expires_at > claimed.lease_expires_at  # autosave kept the hold

    # A lapsed draft stays drafted (the draft is kept), only the hold goes.
    clock.advance(timedelta(minutes=20))
    assert expire_leases(db) == [uid]
    assert item_of(db, uid).status is WorklistStatus.DRAFTED
    assert post(client, "county_reader2", uid, "claim").json()["status"] == "drafted"

    with db() as session, session.begin():
        assert mark_signed(session, claimed.study_pk, by_user_id=reader.id, final=False)
    pre = item_of(db, uid)
    assert (pre.status, pre.claimed_by_id) == (WorklistStatus.DRAFTED, None)
    with db() as session, session.begin():
        assert mark_signed(session, claimed.study_pk, by_user_id=reader.id, final=True)
    signed = item_of(db, uid)
    assert signed.status is WorklistStatus.SIGNED and signed.version == pre.version + 1
    late = post(client, "county_reader", uid, "claim")
    assert late.status_code == 409 and "signed" in late.json()["detail"]


def race(client: TestClient, uid: str, readers: list[str]) -> list[int]:
    headers = {name: auth(client, name) for name in readers}
    barrier = threading.Barrier(len(readers))
    codes: dict[str, int] = {}

    def run(name: str) -> None:
        barrier.wait()
        codes[name] = client.post(
            f"/api/v1/worklist/{uid}/claim", headers=headers[name]
        ).status_code

    threads = [threading.Thread(target=run, args=(name,)) for name in readers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return sorted(codes.values())


def test_two_readers_racing_exactly_one_wins(
    client: TestClient, db: sessionmaker[Session], cases: dict[str, Case]
) -> None:
    for key in ("xp-chest", "dh-stat", "dh-routine-2"):
        uid = cases[key].study_uid
        assert race(client, uid, ["county_reader", "county_reader2"]) == [200, 409]
        assert item_of(db, uid).version == 1


@pytest.mark.postgres
def test_race_on_postgresql(settings: Settings, postgres_database: str) -> None:
    pg = demo_hub_on(settings, postgres_database)
    sessions = get_sessionmaker(pg)
    cases = populate(pg, sessions)
    add_reader(sessions, "county_reader2", ["DX", "CR", "ECG"])
    add_reader(sessions, "county_reader3", ["DX", "CR", "ECG"])
    client = TestClient(create_app(pg))
    readers = ["county_reader", "county_reader2", "county_reader3"]
    for key in ("xp-chest", "dh-stat"):
        uid = cases[key].study_uid
        assert race(client, uid, readers) == [200, 409, 409]
        assert item_of(sessions, uid).version == 1
    clock.advance(timedelta(minutes=LEASE_MINUTES + 1))
    assert sorted(expire_leases(sessions)) == sorted(
        cases[k].study_uid for k in ("xp-chest", "dh-stat")
    )
