"""Settings from the environment (prefix ``RDX_``), via pydantic-settings.

Nothing in the code branches on "embedded" vs "scale-out" except the factories that read these
settings: an empty ``database_url`` means a SQLite file under ``data_dir``, ``storage_backend``
selects the object store, and ``broker_url`` selects the Celery transport.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RDX_", env_file=None, extra="ignore")

    data_dir: Path = Field(Path("var"), description="Root of everything the embedded mode keeps.")

    # Database: empty → SQLite file in data_dir.
    database_url: str = ""

    # Object store.
    storage_backend: Literal["file", "s3"] = "file"
    s3_endpoint: str = "127.0.0.1:9000"
    s3_access_key: str = ""
    s3_secret_key: str = ""
    s3_bucket: str = "remote-dx"
    s3_secure: bool = False
    s3_region: str | None = None

    # Celery broker: empty → kombu's filesystem transport under data_dir (no server).
    broker_url: str = ""
    broker_visibility_timeout: int = Field(
        300, description="Seconds before Redis redelivers an unacknowledged task (Celery: 1 h)."
    )
    broker_polling_interval: float = 0.1
    broker_queue: str = Field(
        "remote_dx", description="Celery queue name; hubs sharing one broker need distinct names."
    )
    embedded_worker: bool = True
    worker_concurrency: int = 2

    # DICOM receiver.
    ae_title: str = "REMOTE_DX"
    dicom_host: str = "0.0.0.0"
    dicom_port: int = 11112
    dicom_max_associations: int = 32
    move_shared_destinations: str = Field(
        "",
        description="C-MOVE destinations (AE titles, comma-separated) any institution's AE may "
        "move to; otherwise only its own institution's nodes.",
    )
    # DICOM security (issue 7): TLS on the receiver (PS3.15 Annex B.1, the Basic TLS Secure
    # Transport profile) when a certificate and key are given; with a CA, peers must present a
    # certificate it signed. Per-device limits apply where the device row sets none (0: none).
    dicom_tls_cert: Path | None = Field(
        None, description="PEM certificate: the receiver speaks TLS."
    )
    dicom_tls_key: Path | None = None
    dicom_tls_ca: Path | None = Field(
        None, description="PEM CA bundle: peers must present a certificate it signed."
    )
    dicom_device_max_associations: int = Field(
        0, description="Concurrent associations per device (0: no limit; the device may set one)."
    )
    dicom_device_max_instances_per_second: float = Field(
        0.0, description="C-STORE instances/s per device, 1 s burst (0: no limit)."
    )

    # Web/API.
    http_host: str = "0.0.0.0"
    http_port: int = 8000

    # Study completion and reconciliation.
    quiet_seconds: float = Field(
        10.0, description="A study is ready after this long with no new instance."
    )
    sweep_interval: float = 1.0
    reconcile_after_seconds: float = Field(
        120.0, description="Re-enqueue a study whose processing has not finished after this long."
    )
    max_task_attempts: int = 5

    # Auth.
    jwt_secret: str = ""
    jwt_algorithm: str = "HS256"
    access_token_minutes: int = Field(
        60, description="Access tokens are short-lived; clients renew them at /api/v1/auth/refresh."
    )
    # Trust (issue 7): refresh tokens, login lock-out, optional OIDC (Keycloak) sign-in.
    refresh_token_minutes: int = Field(
        60 * 12, description="A refresh token (rotated on each use) is valid this long."
    )
    login_max_failures: int = Field(5, description="Failed logins per username before lock-out.")
    login_max_failures_per_address: int = Field(
        20, description="Failed logins from one client address before it is locked out."
    )
    login_failure_window_minutes: float = 15.0
    login_lockout_minutes: float = 15.0
    oidc_issuer: str = Field("", description="OIDC issuer (e.g. a Keycloak realm URL); empty: off.")
    oidc_audience: str = ""
    oidc_jwks_file: Path | None = None
    oidc_jwks_url: str = ""
    oidc_username_claim: str = "preferred_username"
    oidc_algorithms: str = Field("RS256", description="Accepted JWS algorithms, comma-separated.")
    oidc_jwks_cache_seconds: float = 300.0
    audit_coalesce_seconds: float = Field(
        300.0,
        description="Repeated successful reads of one study by one user within this window are "
        "covered by the first audit record (a viewer fetches every frame); 0 records each.",
    )

    # Reading (issue 4).
    lease_minutes: float = Field(
        15.0, description="A claimed study is the reader's for this long; renewals extend it."
    )
    alert_renotify_minutes: float = Field(
        5.0, description="An unacknowledged critical alert is notified again after this long."
    )

    # Results that travel (issue 4): the address printed (as a QR code) on report PDFs, and how
    # the C-STORE of signed reports back to a township is retried.
    public_base_url: str = Field(
        "http://127.0.0.1:8000", description="Public address of the hub, for /verify links."
    )
    delivery_retry_seconds: float = Field(
        30.0, description="First delay before re-sending a report; doubles per attempt."
    )
    delivery_retry_max_seconds: float = 3600.0
    delivery_max_attempts: int = 12

    demo: bool = False
    routing_file: Path | None = None
    log_level: str = "INFO"
    # Operations (issue 7): "json" = one JSON object per log line; metrics across processes.
    log_format: Literal["text", "json"] = "text"
    metrics_dir: Path | None = Field(
        None, description="Prometheus multi-process folder shared by this host's processes."
    )

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.sqlite_file.resolve()}"

    @property
    def sqlite_file(self) -> Path:
        """The embedded default's database file, used when no ``database_url`` is set."""
        return self.data_dir / "remote_dx.sqlite3"

    @property
    def storage_dir(self) -> Path:
        return self.data_dir / "objects"

    @property
    def broker_dir(self) -> Path:
        return self.data_dir / "broker"

    @property
    def is_sqlite(self) -> bool:
        return self.resolved_database_url.startswith("sqlite")


@lru_cache
def get_settings() -> Settings:
    return Settings()


def reset_settings() -> None:
    """Forget the cached settings (tests and the CLI change the environment)."""
    get_settings.cache_clear()
