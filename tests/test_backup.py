"""Backup and restore (docs/operations.md), tested end to end: a populated hub (studies filed
through the real door, routed worklist items, the hub's secrets) is backed up, restored into a
new data directory / an empty database, and must then pass fsck clean and show the same
worklist to the same reader. SQLite via its online backup API; PostgreSQL via pg_dump /
pg_restore against the machine's server."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from remote_dx.api.app import create_app
from remote_dx.cli import app as cli
from remote_dx.core.db import dispose_engines, get_sessionmaker
from remote_dx.core.models import Instance, Study, WorklistItem
from remote_dx.core.settings import Settings
from remote_dx.ops.backup import BackupError, backup, restore
from remote_dx.ops.fsck import fsck
from remote_dx.reporting.keys import KEY_FILE
from remote_dx.storage.factory import get_store
from tests.support import demo_hub_on
from tests.test_api_worklist import populate, worklist

READERS = ("county_reader", "province_reader")


def snapshot(settings: Settings) -> dict[str, object]:
    """What must survive: every instance (key, hash), study and worklist row, and the worklist
    each reader sees through the API."""
    sessions = get_sessionmaker(settings)
    with sessions() as session:
        instances = sorted(
            session.execute(
                select(Instance.sop_instance_uid, Instance.object_key, Instance.sha256)
            ).all()
        )
        studies = sorted(session.execute(select(Study.study_uid, Study.num_instances)).all())
        items = sorted(
            session.execute(
                select(
                    WorklistItem.study_pk,
                    WorklistItem.pool_id,
                    WorklistItem.priority,
                    WorklistItem.status,
                    WorklistItem.due_at,
                )
            ).all()
        )
    client = TestClient(create_app(settings))
    seen = {user: worklist(client, user) for user in READERS}
    return {"instances": instances, "studies": studies, "items": items, "worklists": seen}


def secrets_of(settings: Settings) -> dict[str, bytes]:
    return {
        name: (settings.data_dir / name).read_bytes()
        for name in ("jwt_secret", KEY_FILE)
        if (settings.data_dir / name).is_file()
    }


def make_secrets(settings: Settings) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    (settings.data_dir / "jwt_secret").write_text("a-secret-of-this-hub-0123456789abcdef")
    (settings.data_dir / KEY_FILE).write_text("-----BEGIN PRIVATE KEY-----\nnot real\n")


def test_sqlite_hub_backup_restore_is_identical_and_fsck_clean(
    settings: Settings, db, tmp_path: Path
) -> None:
    cases = populate(settings, db)
    assert any(c.pool for c in cases.values())
    make_secrets(settings)
    before = snapshot(settings)
    assert before["worklists"]["county_reader"]["total"] > 0

    result = backup(settings, tmp_path / "backup")
    assert result.database == "sqlite" and result.objects == len(before["instances"])
    with pytest.raises(BackupError, match="not empty"):
        backup(settings, tmp_path / "backup")

    restored = settings.model_copy(update={"data_dir": tmp_path / "restored"})
    restore(restored, tmp_path / "backup")
    with pytest.raises(BackupError, match="exists"):
        restore(restored, tmp_path / "backup")

    report = fsck(get_store(restored), get_sessionmaker(restored))
    assert report.clean and report.rows == len(before["instances"]), report.summary()
    assert snapshot(restored) == before
    assert secrets_of(restored) == secrets_of(settings)


def test_backup_taken_while_objects_arrive_restores_with_orphans_fsck_files(
    settings: Settings, db, tmp_path: Path
) -> None:
    """The documented order (database, then objects): an object that lands after the dump is an
    orphan in the restored hub, never a row without its object; fsck --repair files it."""
    populate(settings, db)
    store = get_store(settings)
    late = b""
    original_list = store.list

    def list_then_arrive(prefix: str = ""):  # an instance arrives between dump and copy
        nonlocal late
        from tests.test_fsck import instance_bytes, key_of

        late = instance_bytes("1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2", 1)
        store.put(key_of(late), late)
        return original_list(prefix)

    store.list = list_then_arrive  # type: ignore[method-assign]
    backup(settings, tmp_path / "backup", store=store)
    store.list = original_list  # type: ignore[method-assign]

    restored = settings.model_copy(update={"data_dir": tmp_path / "restored"})
    restore(restored, tmp_path / "backup")
    report = fsck(get_store(restored), get_sessionmaker(restored), repair=True)
    assert [f.kind for f in report.findings] == ["orphan_object"]
    assert report.findings[0].repair == "re-indexed"
    assert fsck(get_store(restored), get_sessionmaker(restored)).clean


def test_cli_backup_and_restore(settings: Settings, db, tmp_path: Path) -> None:
    populate(settings, db)
    runner = CliRunner()
    made = runner.invoke(cli, ["backup", str(tmp_path / "b"), "--data-dir", str(settings.data_dir)])
    assert made.exit_code == 0, made.output
    assert "sqlite database" in made.output
    target = tmp_path / "new"
    back = runner.invoke(cli, ["restore", str(tmp_path / "b"), "--data-dir", str(target)])
    assert back.exit_code == 0, back.output
    checked = runner.invoke(cli, ["fsck", "--data-dir", str(target)])
    assert checked.exit_code == 0, checked.output
    again = runner.invoke(cli, ["restore", str(tmp_path / "b"), "--data-dir", str(target)])
    assert again.exit_code == 1 and "exists" in again.output


@pytest.fixture
def empty_postgres(postgres_url: str) -> Iterator[str]:
    url = make_url(postgres_url)
    name = f"rdx_restore_{uuid.uuid4().hex[:12]}"
    admin = {"host": url.host, "port": url.port or 5432, "user": url.username or "postgres",
             "dbname": "postgres", "autocommit": True}  # fmt: skip
    with psycopg.connect(**admin) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        dispose_engines()
        with psycopg.connect(**admin) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.postgres
def test_postgresql_hub_pg_dump_restore_is_identical(
    settings: Settings, postgres_database: str, empty_postgres: str, tmp_path: Path
) -> None:
    from remote_dx.ops.backup import _pg_tool

    try:
        _pg_tool("pg_dump")
    except BackupError as exc:
        pytest.skip(str(exc))
    source = demo_hub_on(settings, postgres_database)
    populate(source, get_sessionmaker(source))
    before = snapshot(source)

    result = backup(source, tmp_path / "backup")
    assert result.database == "postgresql"
    assert (tmp_path / "backup" / "database.pgdump").stat().st_size > 0

    restored = settings.model_copy(
        update={"database_url": empty_postgres, "data_dir": tmp_path / "restored"}
    )
    restore(restored, tmp_path / "backup")
    report = fsck(get_store(restored), get_sessionmaker(restored))
    assert report.clean and report.rows == len(before["instances"]), report.summary()
    assert snapshot(restored) == before
