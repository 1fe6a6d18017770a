"""What the worklist keeps between requests for speed (issue 7, load) must not change what a user
sees: page statements kept per query shape stay scoped to each user's pool, pages are always read
fresh, and only large totals are reused, for a few seconds."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from remote_dx.core import clock
from remote_dx.core.models import (
    Institution,
    Patient,
    Priority,
    Study,
    StudyStatus,
    User,
    WorklistItem,
)
from remote_dx.routing.route import clear_rules_cache, route_study
from remote_dx.worklist import service
from remote_dx.worklist.service import WorklistQuery, list_worklist

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
