"""What the worklist keeps between requests for speed (issue 7, load) must not change what a user
sees: page statements kept per query shape stay scoped to each user's pool, only large totals are
reused, for a few seconds, and a page kept for a pool (PostgreSQL) is answered only while nothing
it shows has changed, nor its time-bound fields (overdue) turned."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import timedelta

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import make_url, select, text
from sqlalchemy.orm import Session, sessionmaker

from remote_dx.api.app import create_app
from remote_dx.core import clock
from remote_dx.core.db import get_sessionmaker
from remote_dx.core.models import (
    Institution,
    Patient,
    Priority,
    Study,
    StudyStatus,
    User,
    WorklistItem,
)
from remote_dx.core.settings import Settings
from remote_dx.routing.route import clear_rules_cache, route_study
from remote_dx.worklist import service
from remote_dx.worklist.service import WorklistQuery, list_worklist
from tests.support import demo_hub_on

XIPING, DINGHE, PROVINCE = "XIPING", "DINGHE", "HNSRMYY"


@pytest.fixture(autouse=True)
def _fresh_caches() -> None:
    clear_rules_cache()
    service._totals.clear()
    service._page_statements.clear()
    service._count_statements.clear()


def new_study(db: sessionmaker[Session], origin: str) -> str:
    """A processed X-ray from ``origin``, routed; DINGHE's then moved to the province's pool."""
    with db() as session, session.begin():
        source = session.scalar(select(Institution).where(Institution.code == origin))
        study = Study(
            study_uid=f"2.25.{uuid.uuid4().int}",
            patient=Patient(issuer=origin, patient_id=uuid.uuid4().hex[:12], name="李^秀英"),
            origin=source,
            modalities="DX",
            description="胸部正位",
            status=StudyStatus.PROCESSED,
            received_at=clock.utcnow(),
        )
        session.add(study)
        session.flush()
        route_study(session, study, modalities=["DX"], priority=Priority.ROUTINE)
        if origin == DINGHE:
            session.flush()
            item = session.scalar(select(WorklistItem).where(WorklistItem.study_pk == study.id))
            item.pool_id = session.scalar(
                select(Institution.id).where(Institution.code == PROVINCE)
            )
        return study.study_uid


def page(db: sessionmaker[Session], username: str) -> tuple[list[str], int]:
    with db() as session:
        user = session.scalar(select(User).where(User.username == username))
        result = list_worklist(session, user, WorklistQuery(limit=50))
    return [item.study_uid for item in result.items], result.total


def test_kept_statements_stay_in_each_users_scope(db: sessionmaker[Session]) -> None:
    county = {new_study(db, XIPING) for _ in range(2)}
    province = {new_study(db, DINGHE) for _ in range(3)}
    for _ in range(2):  # the second round runs on the kept statements
        seen, total = page(db, "county_reader")
        assert (set(seen), total) == (county, 2)
        seen, total = page(db, "province_reader")
        assert (set(seen), total) == (province, 3)
    assert service._page_statements  # the statements were indeed kept


def test_small_totals_are_exact_large_ones_reused_briefly(
    db: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    first = new_study(db, XIPING)
    assert page(db, "county_reader") == ([first], 1)
    second = new_study(db, XIPING)
    assert page(db, "county_reader")[1] == 2  # below the threshold: counted every time

    monkeypatch.setattr(service, "COUNT_CACHE_MIN", 2)
    assert page(db, "county_reader")[1] == 2
    third = new_study(db, XIPING)
    seen, total = page(db, "county_reader")
    assert set(seen) == {first, second, third}  # the page itself is always fresh
    assert total == 2  # the total counted a moment ago

    monkeypatch.setattr(service, "COUNT_CACHE_SECONDS", 0.0)
    assert page(db, "county_reader")[1] == 3  # once the window has passed: counted again


# --- pages kept per pool until its change counter moves (PostgreSQL triggers, migration 0009) ---


def pg_hub(settings: Settings, postgres_database: str) -> tuple[TestClient, sessionmaker[Session]]:
    pg = demo_hub_on(settings, postgres_database)
    return TestClient(create_app(pg)), get_sessionmaker(pg)


def reader_page(client: TestClient, username: str = "county_reader") -> dict:
    tokens: dict[str, str] = client.__dict__.setdefault("rdx_tokens", {})
    if username not in tokens:
        login = client.post("/api/v1/auth/token", data={"username": username, "password": "demo"})
        tokens[username] = login.json()["access_token"]
    answer = client.get("/api/v1/worklist", headers={"Authorization": f"Bearer {tokens[username]}"})
    assert answer.status_code == 200, answer.text
    return answer.json()


def count_builds(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every page built from the database (not answered from a kept one) appends to the list."""
    from remote_dx.api.routers import worklist as router

    builds: list[int] = []
    real = router.list_worklist

    def counted(*args, **kwargs):
        builds.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(router, "list_worklist", counted)
    return builds


def entry(page: dict, study_uid: str) -> dict:
    return next(item for item in page["items"] if item["study_uid"] == study_uid)


@pytest.mark.postgres
def test_a_readers_page_is_kept_until_anything_it_shows_changes(
    settings: Settings, postgres_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, db = pg_hub(settings, postgres_database)
    uid = new_study(db, XIPING)
    builds = count_builds(monkeypatch)
    first = reader_page(client)
    assert reader_page(client) == first
    assert reader_page(client, "county_supervisor") == first  # same pool, same page
    assert len(builds) == 1  # built once, then answered as kept

    def after(change: str, *params: dict) -> dict:
        """The page after one committed change (SQL on the study of ``uid``)."""
        with db() as session, session.begin():
            study_pk = session.scalar(select(Study.id).where(Study.study_uid == uid))
            session.execute(text(change), {"study_pk": study_pk, **(params[0] if params else {})})
        before = len(builds)
        page = reader_page(client)
        assert len(builds) == before + 1, change  # the change was seen: built afresh
        assert reader_page(client) == page and len(builds) == before + 1  # and kept again
        return page

    page = after("UPDATE worklist_items SET priority = 'stat' WHERE study_pk = :study_pk")
    assert entry(page, uid)["priority"] == "stat"
    page = after("UPDATE studies SET description = '胸部侧位' WHERE id = :study_pk")
    assert entry(page, uid)["study_description"] == "胸部侧位"
    page = after("UPDATE studies SET num_instances = 2 WHERE id = :study_pk")
    assert entry(page, uid)["num_instances"] == 2
    page = after(
        "UPDATE patients SET name = '张^三' WHERE id = "
        "(SELECT patient_pk FROM studies WHERE id = :study_pk)"
    )
    assert entry(page, uid)["patient_name"] == "张^三"
    page = after(
        "INSERT INTO ecg_analyses (study_pk, status, heart_rate, rhythm, critical, "
        "technically_unsatisfactory) VALUES (:study_pk, 'done', 72, 'sinus', false, false)"
    )
    assert entry(page, uid)["ecg"]["rhythm"] == "sinus"
    page = after("UPDATE ecg_analyses SET critical = true WHERE study_pk = :study_pk")
    assert entry(page, uid)["ecg"]["critical"] is True
    page = after(
        "UPDATE worklist_items SET claimed_by_id = "
        "(SELECT id FROM users WHERE username = 'county_reader') WHERE study_pk = :study_pk"
    )
    assert entry(page, uid)["claimed_by"] == "县医院诊断医师"
    page = after("UPDATE users SET full_name = '王医师' WHERE username = 'county_reader'")
    assert entry(page, uid)["claimed_by"] == "王医师"
    page = after("UPDATE institutions SET name = '西坪镇中心卫生院' WHERE code = 'XIPING'")
    assert entry(page, uid)["origin"] == "西坪镇中心卫生院"
    page = after("UPDATE studies SET modalities = NULL WHERE id = :study_pk")
    page = after(
        "INSERT INTO series (series_uid, study_pk, modality) VALUES (:uid, :study_pk, 'DX')",
        {"uid": f"2.25.{uuid.uuid4().int}"},
    )
    assert entry(page, uid)["modality"] == "DX"  # the first series' modality
    page = after("UPDATE series SET modality = 'CR' WHERE study_pk = :study_pk")
    assert entry(page, uid)["modality"] == "CR"

    # A new study routed to the pool (an item inserted) shows at once.
    second = new_study(db, XIPING)
    assert {item["study_uid"] for item in reader_page(client)["items"]} == {uid, second}
    # Another pool's change does not move this pool's counter.
    province = new_study(db, DINGHE)  # routed here first, then moved: both pools counted
    reader_page(client)
    before = len(builds)
    with db() as session, session.begin():
        session.execute(
            text(
                "UPDATE worklist_items SET priority = 'urgent' WHERE study_pk = "
                "(SELECT id FROM studies WHERE study_uid = :uid)"
            ),
            {"uid": province},
        )
    reader_page(client)
    assert len(builds) == before


@pytest.mark.postgres
def test_a_kept_page_turns_overdue_at_the_due_time_without_any_write(
    settings: Settings, postgres_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, db = pg_hub(settings, postgres_database)
    uid = new_study(db, XIPING)
    due = clock.utcnow() + timedelta(minutes=2)  # within the token's lifetime
    with db() as session, session.begin():
        item = session.scalar(select(WorklistItem).join(Study).where(Study.study_uid == uid))
        item.due_at = due
    builds = count_builds(monkeypatch)
    monkeypatch.setattr(service, "COUNT_CACHE_SECONDS", 10 * 24 * 3600.0)  # only the due time
    page = reader_page(client)
    assert entry(page, uid)["overdue"] is False
    clock.advance(due - clock.utcnow() - timedelta(seconds=1))
    assert reader_page(client) == page and len(builds) == 1
    clock.advance(timedelta(seconds=2))
    assert entry(reader_page(client), uid)["overdue"] is True
    assert len(builds) == 2


def test_nothing_is_kept_on_sqlite(
    settings: Settings, db: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    new_study(db, XIPING)
    client = TestClient(create_app(settings))
    builds = count_builds(monkeypatch)
    assert reader_page(client) == reader_page(client)
    assert len(builds) == 2  # no trigger keeps a change counter there, so every page is built


@pytest.mark.postgres
def test_a_filing_and_a_signing_of_one_study_do_not_deadlock_over_the_pool_counter(
    settings: Settings, postgres_database: str
) -> None:
    """A signing changes the item, then the study; an instance filed meanwhile holds the study
    and counts the pool up. The counter is taken at commit, so the filing commits and the
    signing, which waited for the study's row, commits after it; neither is aborted."""
    _client, db = pg_hub(settings, postgres_database)
    uid = new_study(db, XIPING)
    with db() as session:
        study_pk, before = session.execute(
            select(Study.id, Study.num_instances).where(Study.study_uid == uid)
        ).one()
    conninfo = make_url(postgres_database).set(drivername="postgresql").render_as_string(False)
    errors: list[BaseException] = []
    with psycopg.connect(conninfo) as filing, psycopg.connect(conninfo) as signing:
        signing.execute(
            "UPDATE worklist_items SET status = 'claimed' WHERE study_pk = %s", [study_pk]
        )

        def sign() -> None:
            time.sleep(0.3)  # after the filing holds the study's row
            try:
                signing.execute("UPDATE studies SET description = '已读' WHERE id = %s", [study_pk])
                signing.commit()
            except psycopg.Error as exc:
                errors.append(exc)

        signer = threading.Thread(target=sign)
        signer.start()
        try:
            filing.execute(
                "UPDATE studies SET num_instances = num_instances + 1 WHERE id = %s", [study_pk]
            )
            time.sleep(0.6)  # the signing now waits for the study's row
            filing.commit()
        except psycopg.Error as exc:
            errors.append(exc)
        signer.join(timeout=30)
    assert errors == []
    with db() as session:
        description, count = session.execute(
            select(Study.description, Study.num_instances).where(Study.id == study_pk)
        ).one()
    assert (description, count) == ("已读", before + 1)
