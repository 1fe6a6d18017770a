"""Fixtures shared by the whole suite.

Every test gets its own data directory and free ports; servers that the machine may or may not
run (PostgreSQL, Redis, SeaweedFS, dcmtk, Chromium) are probed and the test is skipped with the
reason when they are absent.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from remote_dx.core import clock
from remote_dx.core.db import dispose_engines, get_sessionmaker, session_scope
from remote_dx.core.migrate import upgrade
from remote_dx.core.network import apply_network, load_network_file
from remote_dx.core.settings import Settings, reset_settings
from remote_dx.storage.factory import reset_stores
from tests.support import DEMO_NETWORK, free_port, port_open

POSTGRES_URL = os.environ.get(
    "RDX_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("RDX_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture(autouse=True)
def _isolate(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith("RDX_") and not name.startswith("RDX_TEST_"):
            monkeypatch.delenv(name)
    reset_settings()
    reset_stores()
    clock.reset()
    yield
    clock.reset()
    dispose_engines()
    reset_stores()
    reset_settings()


def settings_env(settings: Settings) -> dict[str, str]:
    """The ``RDX_`` environment that reproduces ``settings`` in a child process."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        env[f"RDX_{name.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


@pytest.fixture
def settings(tmp_path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Embedded-mode settings under a temporary directory, on free ports, short quiet period."""
    value = Settings(
        data_dir=tmp_path / "var",
        dicom_host="127.0.0.1",
        dicom_port=free_port(),
        http_host="127.0.0.1",
        http_port=free_port(),
        quiet_seconds=2.0,
        sweep_interval=0.2,
        jwt_secret="test-secret-not-for-production-0123456789",
    )
    for key, val in settings_env(value).items():
        monkeypatch.setenv(key, val)
    reset_settings()
    return value


@pytest.fixture
def db(settings: Settings) -> sessionmaker[Session]:
    """The settings' database, migrated and seeded with the demo network (passwords ``demo``)."""
    upgrade(settings)
    with session_scope(settings) as session:
        apply_network(session, load_network_file(DEMO_NETWORK), with_passwords=True)
    return get_sessionmaker(settings)


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """A reachable PostgreSQL (CI machines run one); skip with the reason otherwise."""
    if not port_open("127.0.0.1", 5432):
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432 (set RDX_TEST_POSTGRES_URL)")
    return POSTGRES_URL


@pytest.fixture
def postgres_database(postgres_url: str) -> Iterator[str]:
    """URL of a fresh, uniquely named PostgreSQL database for this test, dropped afterwards.

    A database of its own per test: other test runs may use the shared server at the same time.
    """
    url = make_url(postgres_url)
    name = f"rdx_test_{uuid.uuid4().hex[:12]}"
    admin = {
        "host": url.host or "127.0.0.1",
        "port": url.port or 5432,
        "user": url.username or "postgres",
        "dbname": "postgres",
        "autocommit": True,
        "connect_timeout": 5,
    }
    if url.password:
        admin["password"] = url.password
    try:
        with psycopg.connect(**admin) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as exc:
        pytest.skip(f"cannot create a PostgreSQL test database: {exc}")
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        dispose_engines()
        with psycopg.connect(**admin) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def redis_url() -> str:
    if not port_open("127.0.0.1", 6379):
        pytest.skip("Redis is not reachable on 127.0.0.1:6379 (set RDX_TEST_REDIS_URL)")
    return REDIS_URL


@pytest.fixture(scope="session")
def dcmtk() -> str:
    """Path of dcmtk's storescu; skip when dcmtk is not installed."""
    path = shutil.which("storescu")
    if path is None:
        pytest.skip("dcmtk is not installed (apt-get install dcmtk)")
    return path


# Real S3 (SeaweedFS) fixtures, kept in their own module.
from tests.s3_server import s3_server, s3_settings  # noqa: E402,F401
