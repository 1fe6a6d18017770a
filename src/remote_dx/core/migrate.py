"""Run the Alembic migrations shipped inside the package (SQLite and PostgreSQL alike)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from remote_dx.core.settings import Settings, get_settings

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(settings: Settings | None = None) -> Config:
    settings = settings or get_settings()
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", settings.resolved_database_url)
    return config


def upgrade(settings: Settings | None = None, revision: str = "heads") -> None:
    """Upgrade to every head: features may add migrations on parallel branches off one parent
    until a merge revision joins them, and an install must get all of them either way."""
    settings = settings or get_settings()
    if settings.is_sqlite:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(settings), revision)
