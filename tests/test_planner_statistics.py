"""SQLite's planner statistics are gathered by the periodic sweep (nothing else runs ANALYZE)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from remote_dx.core.db import get_engine, refresh_planner_statistics
from remote_dx.core.models import Institution, Patient, Study
from remote_dx.core.settings import Settings
from remote_dx.tasks import Sweeper


def _stat_rows(settings: Settings) -> dict[str, str]:
    with get_engine(settings).connect() as conn:
        exists = conn.exec_driver_sql(
            "SELECT count(*) FROM sqlite_master WHERE name = 'sqlite_stat1'"
        ).scalar()
        if not exists:
            return {}
        return {
            f"{tbl}/{idx}": stat
            for tbl, idx, stat in conn.exec_driver_sql("SELECT tbl, idx, stat FROM sqlite_stat1")
        }


def _add_studies(db: sessionmaker[Session], count: int, start: int) -> None:
    with db() as session:
        origin = session.scalar(select(Institution).where(Institution.parent_id.is_not(None)))
        assert origin is not None
        patient = Patient(patient_id=f"P{start}", issuer="")
        session.add(patient)
        session.flush()
        for n in range(start, start + count):
            session.add(
                Study(
                    study_uid=f"1.2.826.0.1.3680043.10.1.{n}",
                    patient_pk=patient.id,
                    origin_id=origin.id,
                    accession_number=f"A{n}",
                )
            )
        session.commit()


def test_the_sweep_gathers_statistics_and_again_only_after_growth(
    settings: Settings, db: sessionmaker[Session]
) -> None:
    assert _stat_rows(settings) == {}, "a fresh database has no planner statistics"
    _add_studies(db, 50, 0)

    Sweeper(settings, enqueue=lambda uid: True).run_once()
    stats = _stat_rows(settings)
    accession = [v for k, v in stats.items() if k.startswith("studies/") and "accession" in k]
    assert accession and accession[0].startswith("50 "), stats  # 50 rows seen by ANALYZE

    assert refresh_planner_statistics(get_engine(settings)) is False  # nothing grew
    _add_studies(db, 150, 50)
    assert refresh_planner_statistics(get_engine(settings)) is True
    stats = _stat_rows(settings)
    accession = [v for k, v in stats.items() if k.startswith("studies/") and "accession" in k]
    assert accession[0].startswith("200 "), stats
