"""``remote-dx backup DEST`` / ``remote-dx restore SRC``: the database, the objects and the
hub's own secrets, in an order that restores to a consistent hub.

Order matters: the **database first, then the objects**. Every row in the dump was committed
after its object was durable (the filing order), so every row of the dump finds its object in
the copy taken afterwards; an object that arrived in between is merely an *orphan* in the
restored hub, which ``remote-dx fsck --repair`` files again. The reverse order could lose
objects whose rows are in the dump.

- SQLite (embedded): SQLite's online backup API (``sqlite3.Connection.backup``) — a consistent
  copy while the hub keeps writing; the same as the shell's ``.backup``.
- PostgreSQL: ``pg_dump --format=custom`` (a consistent snapshot while the hub runs);
  restore with ``pg_restore --no-owner`` into an empty database.
- Objects: every key copied through the :class:`ObjectStore` interface to ``objects/<key>``
  (works for FileStore and any S3); ``manifest.json`` lists key, size and SHA-256. Large S3
  deployments may prefer ``mc mirror`` / ``aws s3 sync`` (docs/operations.md) — the result is
  the same folder layout.
- Files: the hub's secrets in ``data_dir`` (``jwt_secret``, ``report_signing_key.pem``): a hub
  restored without its signing key can no longer sign in its own name.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sqlite3
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from remote_dx.core.clock import utcnow
from remote_dx.core.settings import Settings
from remote_dx.storage.base import ObjectStore
from remote_dx.storage.factory import make_store

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SQLITE_FILE = "remote_dx.sqlite3"
PG_DUMP_FILE = "database.pgdump"
OBJECTS = "objects"
FILES = "files"
SECRET_FILES = ("jwt_secret", "report_signing_key.pem")


class BackupError(RuntimeError):
    pass


@dataclass
class BackupResult:
    path: Path
    database: str  # "sqlite" | "postgresql"
    objects: int
    bytes: int
    files: list[str]


def _pg_tool(name: str) -> str:
    """A PostgreSQL client tool: on PATH, else the newest under /usr/lib/postgresql/*/bin."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    if not candidates:
        raise BackupError(f"{name} not found (apt-get install postgresql-client)")
    return str(candidates[-1])


def libpq_url(database_url: str) -> str:
    """The SQLAlchemy URL as libpq takes it (``postgresql+psycopg://`` → ``postgresql://``)."""
    url = make_url(database_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


def backup(settings: Settings, dest: Path, *, store: ObjectStore | None = None) -> BackupResult:
    """Write a backup of the hub of ``settings`` into the new folder ``dest``."""
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise BackupError(f"{dest} exists and is not empty")
    dest.mkdir(parents=True, exist_ok=True)
    store = store or make_store(settings)
    manifest: dict[str, Any] = {"created_at": utcnow().isoformat(), "format": 1}

    if settings.is_sqlite:
        source = make_url(settings.resolved_database_url).database
        if not source or not Path(source).is_file():
            raise BackupError(f"no SQLite database at {source}")
        with sqlite3.connect(source) as src, sqlite3.connect(dest / SQLITE_FILE) as out:
            src.backup(out)
        out.close()
        src.close()
        manifest["database"] = {"kind": "sqlite", "file": SQLITE_FILE}
    else:
        url = libpq_url(settings.resolved_database_url)
        done = subprocess.run(
            [
                _pg_tool("pg_dump"),
                "--format=custom",
                "--no-owner",
                "-f",
                str(dest / PG_DUMP_FILE),
                "--dbname",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=3600,
        )
        if done.returncode != 0:
            raise BackupError(f"pg_dump failed: {done.stderr.strip()[:500]}")
        manifest["database"] = {"kind": "postgresql", "file": PG_DUMP_FILE}

    objects: list[dict[str, Any]] = []
    total = 0
    root = dest / OBJECTS
    for key in store.list():
        data = store.get(key)
        target = root / key
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        objects.append({"key": key, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
        total += len(data)
    manifest["objects"] = objects

    copied = []
    for name in SECRET_FILES:
        path = settings.data_dir / name
        if path.is_file():
            (dest / FILES).mkdir(exist_ok=True)
            shutil.copy2(path, dest / FILES / name)
            copied.append(name)
    manifest["files"] = copied
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return BackupResult(dest, manifest["database"]["kind"], len(objects), total, copied)


def restore(settings: Settings, source: Path, *, store: ObjectStore | None = None) -> BackupResult:
    """Restore the backup in ``source`` into the (new, empty) hub of ``settings``.

    Refuses to overwrite: the SQLite file must not exist yet, a PostgreSQL database must have no
    tables; objects are put under their keys (an existing key is replaced by the backup's bytes
    only if they differ — checked against the manifest's SHA-256).
    """
    source = Path(source)
    manifest = json.loads((source / MANIFEST).read_text())
    kind = manifest["database"]["kind"]
    store = store or make_store(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)

    if kind == "sqlite":
        if not settings.is_sqlite:
            raise BackupError("the backup holds a SQLite database; this hub uses PostgreSQL")
        target = Path(make_url(settings.resolved_database_url).database or "")
        if target.exists():
            raise BackupError(f"{target} exists: restore into a new data directory")
        with sqlite3.connect(source / SQLITE_FILE) as src, sqlite3.connect(target) as out:
            src.backup(out)
        out.close()
        src.close()
    else:
        if settings.is_sqlite:
            raise BackupError("the backup holds a PostgreSQL dump; set RDX_DATABASE_URL")
        done = subprocess.run(
            [
                _pg_tool("pg_restore"),
                "--no-owner",
                "--exit-on-error",
                "--dbname",
                libpq_url(settings.resolved_database_url),
                str(source / PG_DUMP_FILE),
            ],
            capture_output=True,
            text=True,
            timeout=3600,
        )
        if done.returncode != 0:
            raise BackupError(f"pg_restore failed: {done.stderr.strip()[:500]}")

    total = 0
    for entry in manifest["objects"]:
        data = (source / OBJECTS / entry["key"]).read_bytes()
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise BackupError(f"backup object {entry['key']} is corrupt (SHA-256 differs)")
        store.put(entry["key"], data)
        total += len(data)

    for name in manifest.get("files", []):
        target = settings.data_dir / name
        if not target.exists():
            shutil.copy2(source / FILES / name, target)
            os.chmod(target, 0o600)
    return BackupResult(source, kind, len(manifest["objects"]), total, manifest.get("files", []))
