"""Readiness: can this process do its work now? One probe per dependency, each bounded in time.

``/readyz`` answers 503 naming every failing dependency, so a load balancer stops sending traffic
and an operator sees at once which part is down.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from remote_dx.core.settings import Settings
from remote_dx.storage.base import ObjectStore

PROBE_TIMEOUT = 2.0  # seconds, per network probe


@dataclass
class Readiness:
    checks: dict[str, str] = field(default_factory=dict)  # name → "ok" or the error

    @property
    def failing(self) -> list[str]:
        return [name for name, outcome in self.checks.items() if outcome != "ok"]

    @property
    def ready(self) -> bool:
        return not self.failing


def check_database(sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        session.execute(text("SELECT 1"))


def check_broker(settings: Settings) -> None:
    """Reach the Celery broker: the filesystem transport's folder, or the broker server."""
    url = settings.broker_url
    if not url or url.startswith("filesystem://"):
        folder = settings.broker_dir
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK | os.X_OK):
            raise OSError(f"broker folder {folder} is not writable")
        return
    if url.startswith(("redis://", "rediss://", "unix://")):
        import redis

        client = redis.Redis.from_url(
            url, socket_connect_timeout=PROBE_TIMEOUT, socket_timeout=PROBE_TIMEOUT
        )
        try:
            client.ping()
        finally:
            client.close()
        return
    from kombu import Connection

    with Connection(url, connect_timeout=PROBE_TIMEOUT) as connection:
        connection.ensure_connection(max_retries=1, timeout=PROBE_TIMEOUT)


def probe(settings: Settings, sessions: sessionmaker[Session], store: ObjectStore) -> Readiness:
    probes: dict[str, Callable[[], None]] = {
        "database": lambda: check_database(sessions),
        "storage": store.check,
        "broker": lambda: check_broker(settings),
    }
    result = Readiness()
    for name, run in probes.items():
        try:
            run()
        except Exception as exc:  # any failure means "not ready", reported by name
            result.checks[name] = f"{type(exc).__name__}: {exc}"[:500]
        else:
            result.checks[name] = "ok"
    return result
