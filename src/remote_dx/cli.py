"""The one command, ``remote-dx``: serve, scp, api, worker, migrate, push, users.

Each option is also an ``RDX_`` environment variable; a given option wins over the environment.
Commands import their stage lazily so ``remote-dx push`` on a township PC starts fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from remote_dx.core.settings import Settings

app = typer.Typer(help="remote_dx: remote imaging and ECG reading hub.", no_args_is_help=True)

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="RDX_DATA_DIR")]
HttpPort = Annotated[int | None, typer.Option("--http-port", help="RDX_HTTP_PORT")]
DicomPort = Annotated[int | None, typer.Option("--dicom-port", help="RDX_DICOM_PORT")]
QuietSeconds = Annotated[float | None, typer.Option("--quiet-seconds", help="RDX_QUIET_SECONDS")]
Demo = Annotated[bool | None, typer.Option("--demo/--no-demo", help="RDX_DEMO")]


def _settings(**overrides: Any) -> Settings:
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


@app.command()
def serve(
    data_dir: DataDir = None,
    http_port: HttpPort = None,
    dicom_port: DicomPort = None,
    quiet_seconds: QuietSeconds = None,
    demo: Demo = None,
) -> None:
    """Run the whole hub in one process: DICOM receiver, web/API and an embedded worker."""
    from remote_dx.serve import run_hub

    run_hub(
        _settings(
            data_dir=data_dir,
            http_port=http_port,
            dicom_port=dicom_port,
            quiet_seconds=quiet_seconds,
            demo=demo,
        )
    )


@app.command()
def scp(data_dir: DataDir = None, dicom_port: DicomPort = None) -> None:
    """Run only the DICOM receiver (scale-out: several behind a load balancer)."""
    from remote_dx.ingest.dicom_scp import run_receiver

    run_receiver(_settings(data_dir=data_dir, dicom_port=dicom_port))


@app.command()
def api(data_dir: DataDir = None, http_port: HttpPort = None) -> None:
    """Run only the web/API."""
    from remote_dx.serve import run_api

    run_api(_settings(data_dir=data_dir, http_port=http_port))


@app.command()
def worker(
    data_dir: DataDir = None,
    concurrency: Annotated[int | None, typer.Option(help="RDX_WORKER_CONCURRENCY")] = None,
) -> None:
    """Run a Celery worker (with the study sweeper) against RDX_BROKER_URL."""
    from remote_dx.tasks import run_worker

    run_worker(_settings(data_dir=data_dir, worker_concurrency=concurrency))


@app.command()
def migrate(data_dir: DataDir = None) -> None:
    """Create or upgrade the database schema (Alembic)."""
    from remote_dx.core.migrate import upgrade

    upgrade(_settings(data_dir=data_dir))
    typer.echo("database is at the latest schema")


@app.command()
def push(
    paths: Annotated[list[Path], typer.Argument(help="DICOM files or folders (recursive)")],
    host: Annotated[str, typer.Option(help="receiver host")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="receiver DICOM port")] = 11112,
    calling_ae: Annotated[
        str, typer.Option("--calling-ae", "-a", help="our AE title")
    ] = "XIPING_DR",
    called_ae: Annotated[
        str, typer.Option("--called-ae", "-c", help="hub's AE title")
    ] = "REMOTE_DX",
) -> None:
    """Send DICOM files to a hub by C-STORE (the township side)."""
    from remote_dx.ingest.push import push_cli

    raise typer.Exit(
        push_cli(paths, host=host, port=port, calling_ae=calling_ae, called_ae=called_ae)
    )


if __name__ == "__main__":  # pragma: no cover
    app()
