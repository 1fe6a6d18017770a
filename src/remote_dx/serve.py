"""Process composition: the whole hub in one process (``run_hub``) or the API alone (``run_api``).

``remote-dx serve`` is the embedded default: migrate the database, optionally seed the demo
network, start the DICOM receiver and the in-process Celery worker, then serve HTTP until Ctrl-C
or SIGTERM, and stop everything in the reverse order.

Signals: uvicorn handles SIGINT/SIGTERM while it serves, shuts down gracefully and then raises
the signal again with the previous handler in place (so a plain program would die of it, with
the receiver and worker never stopped). We install handlers that turn that re-raised signal into
:class:`KeyboardInterrupt`, so our ``finally`` always runs and the process exits 0.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

import uvicorn

from remote_dx.core.heap import freeze_startup_heap
from remote_dx.core.settings import Settings

log = logging.getLogger(__name__)

_REPO_DEMO_NETWORK = Path(__file__).resolve().parents[2] / "sample_studies" / "demo_network.yaml"


class Stoppable(Protocol):
    def stop(self) -> None: ...


def demo_network_file() -> Path:
    """The demo network YAML: the repository's copy, else one in the working directory."""
    for candidate in (_REPO_DEMO_NETWORK, Path.cwd() / "sample_studies" / "demo_network.yaml"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        "sample_studies/demo_network.yaml not found (looked next to the source tree and in the "
        "working directory); run from a checkout of remote_dx or drop --demo"
    )


def demo_routing_file() -> Path | None:
    """The demo's routing rules (``sample_studies/routing_rules.yaml``) beside the demo network."""
    try:
        path = demo_network_file().with_name("routing_rules.yaml")
    except FileNotFoundError:
        return None
    return path if path.is_file() else None


def seed_demo(settings: Settings) -> list[str]:
    """Load the demo network with its passwords (idempotent); return the demo usernames."""
    from remote_dx.core.db import session_scope
    from remote_dx.core.network import apply_network, load_network_file

    data = load_network_file(demo_network_file())
    with session_scope(settings) as session:
        apply_network(session, data, with_passwords=True)
    return [str(u["username"]) for u in data.get("users", []) if "username" in u]


def _configure_logging(settings: Settings) -> None:
    from remote_dx.ops.logging import configure_logging

    configure_logging(settings.log_level, settings.log_format)  # RDX_LOG_FORMAT=json
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=settings.log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
    # pynetdicom narrates every PDU at INFO; the receiver logs what matters itself.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)


@contextmanager
def _signals_interrupt() -> Iterator[None]:
    """While inside, SIGINT and SIGTERM raise KeyboardInterrupt (uvicorn overrides this while it
    serves and re-raises the signal afterwards, which then lands here)."""

    def interrupt(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous: dict[int, Any] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, interrupt)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _web_url(settings: Settings) -> str:
    host = settings.http_host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.http_port}"


def _level(settings: Settings) -> int:
    level = logging.getLevelName(settings.log_level.upper())
    return level if isinstance(level, int) else logging.INFO


def _serve_http(settings: Settings) -> None:
    """Run uvicorn on the settings' host/port until a signal; returns when it has shut down."""
    from remote_dx.api.app import create_app

    config = uvicorn.Config(
        create_app(settings),
        host=settings.http_host,
        port=settings.http_port,
        log_level=settings.log_level.lower(),
        log_config=None if settings.log_format == "json" else uvicorn.config.LOGGING_CONFIG,
        lifespan="on",
        timeout_graceful_shutdown=10,
        # uvicorn formats an access line per request even when its level is filtered out; at
        # WARNING and above nobody reads them (our middleware logs errors and slow answers).
        access_log=_level(settings) <= logging.INFO,
        # httptools and uvloop when installed (the "auto" choices): C parsing and event loop
        # instead of h11 and asyncio's pure-Python selector loop, less CPU per request.
        http="auto",
        loop="auto",
    )
    freeze_startup_heap()  # the app is built: its routes, models and imports live as long as we do
    uvicorn.Server(config).run()


def _stop_all(stack: list[tuple[str, Stoppable]]) -> None:
    while stack:
        name, component = stack.pop()
        try:
            component.stop()
            log.info("%s stopped", name)
        except BaseException:  # keep stopping the others, whatever one of them does
            log.exception("stopping the %s failed", name)


def _banner(settings: Settings, demo_users: list[str]) -> str:
    worker = (
        "embedded (in this process)"
        if settings.embedded_worker
        else "external (run `remote-dx worker`)"
    )
    lines = [
        "remote_dx hub",
        f"  web/API    {_web_url(settings)}   (API docs: {_web_url(settings)}/docs)",
        f"  DICOM      {settings.ae_title}@{settings.dicom_host}:{settings.dicom_port}",
        f"  data dir   {settings.data_dir.resolve()}",
        f"  worker     {worker}",
    ]
    if demo_users:
        lines.append(f"  demo users {', '.join(demo_users)} (password: demo)")
    lines.append("  Ctrl-C to stop")
    return "\n".join(lines)


def run_hub(settings: Settings, *, echo: Callable[[str], None] | None = None) -> None:
    """The embedded default: everything in one process (``remote-dx serve``)."""
    from remote_dx.core.migrate import upgrade
    from remote_dx.ingest.dicom_scp import start_receiver

    _configure_logging(settings)
    echo = echo or (lambda text: print(text, flush=True))
    running: list[tuple[str, Stoppable]] = []
    with _signals_interrupt():
        try:
            upgrade(settings)
            demo_users = seed_demo(settings) if settings.demo else []
            running.append(("DICOM receiver", start_receiver(settings)))
            if settings.embedded_worker:
                from remote_dx.tasks import start_embedded_worker

                running.append(("embedded worker", start_embedded_worker(settings)))
            echo(_banner(settings, demo_users))
            _serve_http(settings)
        except KeyboardInterrupt:
            log.info("stopping")
        finally:
            _stop_all(running)


def run_api(settings: Settings) -> None:
    """The web/API alone (``remote-dx api``; scale-out: several behind a load balancer).

    It does not migrate: in scale-out ``remote-dx migrate`` runs once per release.
    """
    _configure_logging(settings)
    with _signals_interrupt():
        try:
            _serve_http(settings)
        except KeyboardInterrupt:
            log.info("stopping")
