"""Our DICOM receiver as a benchmark peer: ``remote-dx scp`` in its own process.

Each run gets a fresh data dir (embedded: SQLite file + FileStore under it) or a freshly created
PostgreSQL database and S3 bucket (scale-out). The schema is migrated and the demo network seeded
here, in the bench process, before the receiver starts, exactly as ``remote-dx migrate`` and
``serve --demo`` would. "Queryable" means the row is in ``instances`` (what the API reads).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import Engine, text

from remote_dx.core.db import dispose_engines, make_engine, session_scope
from remote_dx.core.migrate import upgrade
from remote_dx.core.network import apply_network, load_network_file
from remote_dx.core.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DEMO_NETWORK = ROOT / "sample_studies" / "demo_network.yaml"
POSTGRES_ADMIN_URL = os.environ.get(
    "RDX_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def remote_dx_command() -> list[str]:
    local = Path(sys.executable).parent / "remote-dx"
    if local.exists():
        return [str(local)]
    found = shutil.which("remote-dx")
    return [found] if found else [sys.executable, "-m", "remote_dx.cli"]


def receiver_available() -> str | None:
    """None when ``remote-dx scp`` can run, else why not (the receiver is still being built)."""
    try:
        import remote_dx.ingest.dicom_scp as scp
    except ImportError as exc:
        return f"remote_dx.ingest.dicom_scp cannot be imported: {exc}"
    if not hasattr(scp, "run_receiver"):
        return "remote_dx.ingest.dicom_scp has no run_receiver()"
    return None


def _echo(port: int, calling_ae: str, called_ae: str) -> bool:
    """A real C-ECHO association: a bare TCP probe would sit in the receiver until ARTIM."""
    try:
        result = subprocess.run(
            ["echoscu", "-to", "5", "-aet", calling_ae, "-aec", called_ae, "127.0.0.1", str(port)],
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def settings_env(settings: Settings) -> dict[str, str]:
    """The ``RDX_`` environment that reproduces ``settings`` in the child process."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        env[f"RDX_{name.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


@dataclass
class S3Target:
    endpoint: str
    access_key: str
    secret_key: str


class PostgresDatabase:
    """A database created for one run and dropped afterwards."""

    def __init__(self, admin_url: str = POSTGRES_ADMIN_URL) -> None:
        self.admin_url = admin_url
        self.name = f"rdx_bench_{uuid.uuid4().hex[:10]}"
        self._admin: Engine | None = None

    @property
    def url(self) -> str:
        return self.admin_url.rsplit("/", 1)[0] + "/" + self.name

    def _engine(self) -> Engine:
        if self._admin is None:
            self._admin = make_engine(self.admin_url).execution_options(
                isolation_level="AUTOCOMMIT"
            )
        return self._admin

    def create(self) -> None:
        with self._engine().connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{self.name}"'))

    def drop(self) -> None:
        with self._engine().connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
        self._engine().dispose()


def postgres_unavailable(admin_url: str = POSTGRES_ADMIN_URL) -> str | None:
    try:
        engine = make_engine(admin_url)
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as exc:  # any failure: report it, the mode is skipped
        return f"PostgreSQL unreachable at {admin_url}: {exc.__class__.__name__}: {exc}"
    return None


def postgres_version(admin_url: str = POSTGRES_ADMIN_URL) -> str:
    try:
        engine = make_engine(admin_url)
        with engine.connect() as conn:
            value = conn.execute(text("SHOW server_version")).scalar()
        engine.dispose()
        return f"PostgreSQL {value}"
    except Exception:  # a version string is nice to have, never a reason to fail
        return "PostgreSQL unknown"


class ReceiverPeer:
    """``remote-dx scp`` on a free port against a fresh database and object store."""

    ae_title = "REMOTE_DX"
    calling_ae = "XIPING_DR"

    def __init__(
        self,
        name: str,
        workdir: Path,
        port: int,
        *,
        postgres: bool = False,
        s3: S3Target | None = None,
        extra_env: dict[str, str] | None = None,
        processes: int = 1,
    ) -> None:
        self.name = name
        self.workdir = workdir
        self.port = port
        self.database = PostgresDatabase() if postgres else None
        self.s3 = s3
        self.extra_env = extra_env or {}
        self.processes = processes
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: BinaryIO | None = None
        self._engine: Engine | None = None

    def settings(self) -> Settings:
        values: dict[str, object] = {
            "data_dir": self.workdir / "var",
            "dicom_host": "127.0.0.1",
            "dicom_port": self.port,
            "ae_title": self.ae_title,
            "log_level": "WARNING",
        }
        if self.database is not None:
            values["database_url"] = self.database.url
        if self.s3 is not None:
            values.update(
                storage_backend="s3",
                s3_endpoint=self.s3.endpoint,
                s3_access_key=self.s3.access_key,
                s3_secret_key=self.s3.secret_key,
                s3_bucket=f"bench-{uuid.uuid4().hex[:12]}",
            )
        return Settings(**values)  # type: ignore[arg-type]

    def start(self, timeout: float = 60.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.database is not None:
            self.database.create()
        settings = self.settings()
        upgrade(settings)
        with session_scope(settings) as session:
            apply_network(session, load_network_file(DEMO_NETWORK), with_passwords=False)
        dispose_engines()
        self._engine = make_engine(settings.resolved_database_url)

        env = {k: v for k, v in os.environ.items() if not k.startswith("RDX_")}
        env.update(settings_env(settings))
        env.update(self.extra_env)
        env["TCP_NODELAY"] = "1"
        self._log = (self.workdir / "receiver.log").open("wb")
        command = [
            *remote_dx_command(),
            "scp",
            "--data-dir",
            str(settings.data_dir),
            "--dicom-port",
            str(self.port),
            *(["--processes", str(self.processes)] if self.processes > 1 else []),
        ]
        self.proc = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=self.workdir
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"remote-dx scp exited with {self.proc.returncode}; "
                    f"see {self.workdir}/receiver.log"
                )
            if _echo(self.port, self.calling_ae, self.ae_title):
                return
            time.sleep(0.1)
        raise RuntimeError(f"remote-dx scp did not listen on port {self.port} in {timeout:.0f} s")

    def count(self) -> int:
        """Instances committed to the index, i.e. queryable."""
        assert self._engine is not None
        with self._engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM instances")).scalar_one())

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
        if self.database is not None:
            self.database.drop()
