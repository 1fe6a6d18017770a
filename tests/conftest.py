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
from pathlib import Path

import psycopg
import pytest
from argon2 import PasswordHasher, profiles
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from remote_dx.core import clock, security
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
JWT_SECRET = "test-secret-not-for-production-0123456789"


@pytest.fixture(scope="session", autouse=True)
def _cheap_password_hashing() -> Iterator[None]:
    """Argon2id at its cheapest parameters for the passwords the suite itself hashes.

    The production parameters (RFC 9106's low-memory choice: 3 passes over 64 MiB) cost ~135 ms
    a hash or a check; every test seeds five demo users and most log some in, which came to
    minutes of the suite. Checking reads the parameters from the stored hash, so hubs the tests
    start as processes check these seeded hashes cheaply too. ``test_core`` asserts the
    production parameters.
    """
    production = security._hasher
    security._hasher = PasswordHasher.from_parameters(profiles.CHEAPEST)
    yield
    security._hasher = production


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
        jwt_secret=JWT_SECRET,
    )
    for key, val in settings_env(value).items():
        monkeypatch.setenv(key, val)
    reset_settings()
    return value


def _migrate_and_seed(settings: Settings) -> None:
    upgrade(settings)
    with session_scope(settings) as session:
        apply_network(session, load_network_file(DEMO_NETWORK), with_passwords=True)


@pytest.fixture(scope="session")
def _seeded_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated, seeded SQLite file that each test's ``db`` starts from as a copy: the same
    rows as migrating and seeding anew, without paying for it a few hundred times."""
    template = Settings(
        data_dir=tmp_path_factory.mktemp("seeded") / "var",
        database_url="",
        jwt_secret=JWT_SECRET,
    )
    _migrate_and_seed(template)
    dispose_engines()  # the last connection's close checkpoints the WAL into the file
    return template.sqlite_file


@pytest.fixture
def db(settings: Settings, _seeded_sqlite: Path) -> sessionmaker[Session]:
    """The settings' database, migrated and seeded with the demo network (passwords ``demo``)."""
    if settings.database_url or settings.sqlite_file.exists():
        _migrate_and_seed(settings)  # never copy over a database something already opened
    else:
        settings.sqlite_file.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_seeded_sqlite, settings.sqlite_file)
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
