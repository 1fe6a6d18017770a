"""The one command, ``remote-dx``: serve, scp, api, worker, migrate, push, users.

Each option is also an ``RDX_`` environment variable; a given option wins over the environment.
Commands import their stage lazily so ``remote-dx push`` on a township PC starts fast.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from remote_dx.core.settings import Settings, get_settings, reset_settings

app = typer.Typer(help="remote_dx: remote imaging and ECG reading hub.", no_args_is_help=True)

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="RDX_DATA_DIR")]
HttpPort = Annotated[int | None, typer.Option("--http-port", help="RDX_HTTP_PORT")]
DicomPort = Annotated[int | None, typer.Option("--dicom-port", help="RDX_DICOM_PORT")]
QuietSeconds = Annotated[float | None, typer.Option("--quiet-seconds", help="RDX_QUIET_SECONDS")]
Demo = Annotated[bool | None, typer.Option("--demo/--no-demo", help="RDX_DEMO")]
MetricsPort = Annotated[
    int | None, typer.Option("--metrics-port", help="serve Prometheus /metrics on this port")
]


def _settings(**overrides: Any) -> Settings:
    """The settings with the command's options applied.

    The options are written back into this process's ``RDX_`` environment, so code that reads
    :func:`get_settings` deep inside a stage (a task, the signing key, the routing rules) and any
    child process see the same data directory and ports as the command line asked for.
    """
    for name, value in overrides.items():
        if value is not None:
            text = str(value).lower() if isinstance(value, bool) else str(value)
            os.environ[f"RDX_{name.upper()}"] = text
    reset_settings()
    return get_settings()


@app.command()
def serve(
    data_dir: DataDir = None,
    http_port: HttpPort = None,
    dicom_port: DicomPort = None,
    quiet_seconds: QuietSeconds = None,
    demo: Demo = None,
) -> None:
    """Run the whole hub in one process: DICOM receiver, web/API and an embedded worker."""
    from remote_dx.serve import demo_routing_file, run_hub

    settings = _settings(
        data_dir=data_dir,
        http_port=http_port,
        dicom_port=dicom_port,
        quiet_seconds=quiet_seconds,
        demo=demo,
    )
    if settings.demo and settings.routing_file is None:
        # The demo shows the rules engine at work: the demo rules, unless others are configured.
        settings = _settings(routing_file=demo_routing_file())
    run_hub(settings)


@app.command()
def scp(
    data_dir: DataDir = None,
    dicom_port: DicomPort = None,
    processes: Annotated[
        int | None,
        typer.Option(
            "--processes",
            min=1,
            help="receiver processes, each association to the least-loaded one; default 1",
        ),
    ] = None,
    metrics_port: MetricsPort = None,
) -> None:
    """Run only the DICOM receiver (scale-out: several behind a load balancer)."""
    settings = _settings(data_dir=data_dir, dicom_port=dicom_port)
    _start_metrics(settings, metrics_port, "scp")
    from remote_dx.ingest.dicom_scp import run_receiver

    run_receiver(settings, processes=processes or 1)


@app.command()
def api(data_dir: DataDir = None, http_port: HttpPort = None) -> None:
    """Run only the web/API."""
    from remote_dx.serve import run_api

    run_api(_settings(data_dir=data_dir, http_port=http_port))


@app.command()
def worker(
    data_dir: DataDir = None,
    concurrency: Annotated[int | None, typer.Option(help="RDX_WORKER_CONCURRENCY")] = None,
    metrics_port: MetricsPort = None,
) -> None:
    """Run a Celery worker (with the study sweeper) against RDX_BROKER_URL."""
    settings = _settings(data_dir=data_dir, worker_concurrency=concurrency)
    _start_metrics(settings, metrics_port, "worker")
    from remote_dx.tasks import run_worker

    run_worker(settings)


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


@app.command("upload-ecg")
def upload_ecg(
    paths: Annotated[list[Path], typer.Argument(help="ECG files or export folders")],
    hub: Annotated[
        str, typer.Option(envvar="RDX_UPLOAD_HUB", help="hub URL, e.g. http://hub:8000")
    ],
    device_key: Annotated[
        str | None, typer.Option(envvar="RDX_UPLOAD_DEVICE_KEY", help="the cart's device key")
    ] = None,
    username: Annotated[
        str | None, typer.Option(envvar="RDX_UPLOAD_USERNAME", help="a technician's login")
    ] = None,
    password: Annotated[str | None, typer.Option(envvar="RDX_UPLOAD_PASSWORD")] = None,
    watch: Annotated[bool, typer.Option("--watch", help="keep watching the folders")] = False,
    queue_dir: Annotated[
        Path | None, typer.Option(help="durable queue (default: <first folder>/.rdx)")
    ] = None,
    patient_id: Annotated[str | None, typer.Option()] = None,
    patient_name: Annotated[str | None, typer.Option()] = None,
    patient_sex: Annotated[str | None, typer.Option()] = None,
    patient_birth_date: Annotated[str | None, typer.Option(help="YYYYMMDD")] = None,
    priority: Annotated[str | None, typer.Option(help="routine | urgent | stat")] = None,
    sampling_rate: Annotated[
        float | None, typer.Option(help="CSV without a rate in its header: Hz")
    ] = None,
    units: Annotated[str | None, typer.Option(help="CSV without units: uV or mV")] = None,
    settle_seconds: Annotated[
        float, typer.Option(help="watch: a file must be unchanged this long")
    ] = 1.0,
    rescan_seconds: Annotated[
        float, typer.Option(help="watch: rescan period (shares without events)")
    ] = 10.0,
    retry_max_seconds: Annotated[float, typer.Option(help="backoff cap")] = 300.0,
    attempts: Annotated[int, typer.Option(help="one-shot: tries while the hub is down")] = 4,
) -> None:
    """Upload ECG files to a hub (the township side); --watch an export folder."""
    from remote_dx.uploader import upload_cli

    raise typer.Exit(
        upload_cli(
            paths,
            hub=hub,
            device_key=device_key,
            username=username,
            password=password,
            watch=watch,
            queue_dir=queue_dir,
            fields={
                "patient_id": patient_id,
                "patient_name": patient_name,
                "patient_sex": patient_sex,
                "patient_birth_date": patient_birth_date,
                "priority": priority,
                "sampling_rate": None if sampling_rate is None else f"{sampling_rate:g}",
                "units": units,
            },
            settle_seconds=settle_seconds,
            rescan_seconds=rescan_seconds,
            retry_max_seconds=retry_max_seconds,
            attempts=attempts,
        )
    )


devices_app = typer.Typer(help="Registered devices (modalities, ECG carts).", no_args_is_help=True)
app.add_typer(devices_app, name="devices")


@devices_app.command("key")
def devices_key(
    ae_title: Annotated[str, typer.Argument(help="the device's AE title")],
    data_dir: DataDir = None,
) -> None:
    """Make a new HTTP API key for a device (sent as X-Device-Key) and print it once.

    Only its hash is stored: a lost key cannot be shown again, only replaced (which revokes it).
    """
    from remote_dx.core.db import session_scope
    from remote_dx.ecg.service import new_device_key

    try:
        with session_scope(_settings(data_dir=data_dir)) as session:
            key = new_device_key(session, ae_title)
    except LookupError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(key)
    typer.echo(
        f"(the API key of {ae_title}; shown this once, store it on the device now)", err=True
    )


network_app = typer.Typer(help="The medical community's network.", no_args_is_help=True)
app.add_typer(network_app, name="network")


@network_app.command("load")
def network_load(
    path: Annotated[Path, typer.Argument(help="network YAML (institutions, devices, users)")],
    with_passwords: Annotated[
        bool,
        typer.Option(
            "--with-passwords", help="also set users' passwords from the file (demo/test only)"
        ),
    ] = False,
    data_dir: DataDir = None,
) -> None:
    """Create or update institutions, devices and users from a YAML file (idempotent)."""
    from remote_dx.core.db import session_scope
    from remote_dx.core.network import NetworkFileError, apply_network, load_network_file

    try:
        data = load_network_file(path)
        with session_scope(_settings(data_dir=data_dir)) as session:
            apply_network(session, data, with_passwords=with_passwords)
    except (NetworkFileError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    counts = ", ".join(
        f"{len(data.get(k) or [])} {k}" for k in ("institutions", "devices", "users")
    )
    typer.echo(f"network loaded from {path}: {counts}")


def _start_metrics(settings: Settings, port: int | None, kind: str) -> None:
    """``--metrics-port``: multi-process metrics for this command's processes (children included:
    receiver processes, prefork workers), in RDX_METRICS_DIR or a fresh folder under data_dir."""
    if port is None:
        return
    import shutil

    folder = settings.metrics_dir or settings.data_dir / "metrics" / f"{kind}-{os.getpid()}"
    if settings.metrics_dir is None:
        shutil.rmtree(folder, ignore_errors=True)  # a previous run's counts are not ours
    folder.mkdir(parents=True, exist_ok=True)
    settings = _settings(metrics_dir=folder)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    from remote_dx.core.db import get_sessionmaker
    from remote_dx.ops.metrics import serve_metrics

    serve_metrics(port, get_sessionmaker(settings))


@app.command()
def fsck(
    repair: Annotated[
        bool, typer.Option("--repair", help="re-index orphans, quarantine, mark missing")
    ] = False,
    checksums: Annotated[
        bool, typer.Option("--checksums/--no-checksums", help="read and hash every object")
    ] = True,
    data_dir: DataDir = None,
) -> None:
    """Check the object store against the index, both ways (exit 1 if problems remain)."""
    from remote_dx.core.db import get_sessionmaker
    from remote_dx.ops.fsck import fsck as run_fsck
    from remote_dx.storage.factory import get_store

    settings = _settings(data_dir=data_dir)
    report = run_fsck(
        get_store(settings),
        get_sessionmaker(settings),
        repair=repair,
        checksums=checksums,
        progress=lambda finding: typer.echo(finding.line()),
    )
    typer.echo(report.summary())
    raise typer.Exit(1 if report.unrepaired else 0)


@app.command()
def backup(
    dest: Annotated[Path, typer.Argument(help="new folder for the backup")],
    data_dir: DataDir = None,
) -> None:
    """Back up the database, every object and the hub's secrets (see docs/operations.md)."""
    from remote_dx.ops.backup import BackupError
    from remote_dx.ops.backup import backup as run_backup

    try:
        result = run_backup(_settings(data_dir=data_dir), dest)
    except BackupError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(
        f"backup in {result.path}: {result.database} database, {result.objects} objects "
        f"({result.bytes} bytes), files {', '.join(result.files) or 'none'}"
    )


@app.command()
def restore(
    source: Annotated[Path, typer.Argument(help="a folder written by `remote-dx backup`")],
    data_dir: DataDir = None,
) -> None:
    """Restore a backup into a new hub (new data dir / empty database), then run fsck."""
    from remote_dx.ops.backup import BackupError
    from remote_dx.ops.backup import restore as run_restore

    try:
        result = run_restore(_settings(data_dir=data_dir), source)
    except (BackupError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"restored {result.database} database and {result.objects} objects")


@app.command()
def deidentify(
    study_uid: Annotated[str, typer.Argument(help="Study Instance UID")],
    out_dir: Annotated[Path, typer.Argument(help="folder for the de-identified DICOM files")],
    data_dir: DataDir = None,
) -> None:
    """Export a study de-identified (DICOM PS3.15 basic profile) as DICOM files in OUT_DIR."""
    from remote_dx.core.db import session_scope
    from remote_dx.core.errors import NotFound
    from remote_dx.imaging.deidentify import deidentify_study
    from remote_dx.storage.factory import get_store

    settings = _settings(data_dir=data_dir)
    try:
        with session_scope(settings) as session:
            result = deidentify_study(session, get_store(settings), study_uid)
    except NotFound as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    for name, data in result.files:
        target = out_dir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "README.txt").write_text(result.readme(), encoding="utf-8")
    typer.echo(
        f"{len(result.files)} instances de-identified as study {result.study_uid} "
        f"(patient {result.pseudonym.patient_id}), {len(result.skipped)} left out"
    )


@app.command()
def conformance() -> None:
    """Print the DICOM conformance statement (Markdown), generated from the code."""
    from remote_dx.ingest.conformance import conformance_statement

    typer.echo(conformance_statement(), nl=False)


@app.command()
def simulate(
    county: Annotated[
        list[str], typer.Option("--county", help="county name, e.g. 西峡县 (repeat for several)")
    ],
    days: Annotated[int, typer.Option(min=1, max=3660, help="days of traffic")] = 365,
    start: Annotated[
        str | None, typer.Option(help="first day YYYY-MM-DD (Asia/Shanghai); default: days ago")
    ] = None,
    seed: Annotated[int, typer.Option(help="random seed (same seed, same traffic)")] = 1,
    townships: Annotated[int, typer.Option(min=1, max=18, help="townships per county")] = 12,
    scale: Annotated[
        float, typer.Option(min=0.001, help="volume factor (1 = 16,000 ECGs + 6,300 imaging/yr)")
    ] = 1.0,
    data_dir: DataDir = None,
) -> None:
    """Simulate a county network's traffic through the real ingest and workflow (issue 6)."""
    from datetime import date, datetime, timedelta

    from remote_dx.core.clock import SHANGHAI
    from remote_dx.core.db import get_sessionmaker
    from remote_dx.core.migrate import upgrade
    from remote_dx.simulate import simulate as run_simulation
    from remote_dx.storage.factory import get_store

    settings = _settings(data_dir=data_dir)
    try:
        first = (
            date.fromisoformat(start)
            if start
            else datetime.now(SHANGHAI).date() - timedelta(days=days)
        )
    except ValueError as exc:
        raise typer.BadParameter(f"--start {start!r}: expected YYYY-MM-DD") from exc
    upgrade(settings)
    sessions, store = get_sessionmaker(settings), get_store(settings)
    for index, name in enumerate(county):
        try:
            report = run_simulation(
                settings, sessions, store, county=name, start=first, days=days,
                seed=seed + index, townships=townships, scale=scale,
                progress=lambda line, n=name: typer.echo(f"  {n} {line}"),
            )  # fmt: skip
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from exc
        typer.echo(report.summary())


audit_app = typer.Typer(help="The audit trail (IHE ATNA): verify its hash chain, export it.")
app.add_typer(audit_app, name="audit")


@audit_app.command("verify")
def audit_verify(data_dir: DataDir = None) -> None:
    """Recompute the hash chain; exit 1 naming the first broken record if it was tampered with."""
    from remote_dx.core.audit import verify_chain
    from remote_dx.core.db import session_scope

    with session_scope(_settings(data_dir=data_dir)) as session:
        result = verify_chain(session)
    if result.ok:
        typer.echo(f"audit trail intact: {result.records} records, hash chain verified")
        return
    typer.echo(
        f"audit trail BROKEN at record {result.broken_seq}: {result.reason} "
        f"({result.records} records verified before it)",
        err=True,
    )
    raise typer.Exit(1)


@audit_app.command("export")
def audit_export(
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="file; default stdout")
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="jsonl (with hashes) or csv")] = "jsonl",
    user: Annotated[str | None, typer.Option(help="only this username")] = None,
    patient: Annotated[str | None, typer.Option(help="only this patient (ID^^^Issuer)")] = None,
    action: Annotated[str | None, typer.Option(help="only this action, e.g. login, view")] = None,
    data_dir: DataDir = None,
) -> None:
    """Write the audit records (chain order) as JSON lines or CSV."""
    import sys

    from remote_dx.core.audit import AuditQuery, iter_records, write_csv, write_jsonl
    from remote_dx.core.db import session_scope

    if fmt not in ("jsonl", "csv"):
        typer.echo("error: --format must be jsonl or csv", err=True)
        raise typer.Exit(2)
    query = AuditQuery(user=user, patient=patient, action=action)
    writer = write_csv if fmt == "csv" else write_jsonl
    with session_scope(_settings(data_dir=data_dir)) as session:
        records = iter_records(session, query)
        if output is None:
            count = writer(records, sys.stdout)
        else:
            with output.open("w", encoding="utf-8", newline="") as handle:
                count = writer(records, handle)
    typer.echo(f"{count} audit records exported", err=True)


users_app = typer.Typer(help="User accounts (the API has the same under /api/v1/admin/users).")
app.add_typer(users_app, name="users")


def _set_user(username: str, data_dir: Path | None, **change: Any) -> None:
    from sqlalchemy import select

    from remote_dx.api.security import revoke_all_tokens, unlock_user
    from remote_dx.core.db import session_scope
    from remote_dx.core.models import User
    from remote_dx.core.security import hash_password

    with session_scope(_settings(data_dir=data_dir)) as session:
        user = session.scalar(select(User).where(User.username == username))
        if user is None:
            typer.echo(f"error: no user {username!r}", err=True)
            raise typer.Exit(1)
        if "active" in change:
            user.active = change["active"]
            if not user.active:
                revoke_all_tokens(session, user)
        if "password" in change:
            user.password_hash = hash_password(change["password"])
            revoke_all_tokens(session, user)
            unlock_user(session, user.username)


@users_app.command("disable")
def users_disable(username: str, data_dir: DataDir = None) -> None:
    """Disable a user: every access and refresh token of theirs stops working at once."""
    _set_user(username, data_dir, active=False)
    typer.echo(f"{username} disabled; their tokens are revoked")


@users_app.command("enable")
def users_enable(username: str, data_dir: DataDir = None) -> None:
    """Enable a disabled user."""
    _set_user(username, data_dir, active=True)
    typer.echo(f"{username} enabled")


@users_app.command("password")
def users_password(
    username: str,
    password: Annotated[str, typer.Option(prompt=True, hide_input=True, confirmation_prompt=True)],
    data_dir: DataDir = None,
) -> None:
    """Set a user's password (revokes their tokens and lifts a lock-out)."""
    if len(password) < 10:
        typer.echo("error: use at least 10 characters", err=True)
        raise typer.Exit(1)
    _set_user(username, data_dir, password=password)
    typer.echo(f"password of {username} set; their tokens are revoked")


if __name__ == "__main__":  # pragma: no cover
    app()
