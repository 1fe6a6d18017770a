"""Build the object store the settings ask for (the only place that knows both backends)."""

from __future__ import annotations

from remote_dx.core.settings import Settings, get_settings
from remote_dx.storage.base import ObjectStore
from remote_dx.storage.file_store import FileStore
from remote_dx.storage.s3_store import S3Store

_stores: dict[tuple[object, ...], ObjectStore] = {}


def make_store(settings: Settings) -> ObjectStore:
    if settings.storage_backend == "s3":
        return S3Store(
            settings.s3_endpoint,
            settings.s3_access_key,
            settings.s3_secret_key,
            settings.s3_bucket,
            secure=settings.s3_secure,
            region=settings.s3_region,
        )
    return FileStore(settings.storage_dir.resolve())


def get_store(settings: Settings | None = None) -> ObjectStore:
    settings = settings or get_settings()
    key = (
        settings.storage_backend,
        str(settings.storage_dir.resolve()),
        settings.s3_endpoint,
        settings.s3_bucket,
    )
    if key not in _stores:
        _stores[key] = make_store(settings)
    return _stores[key]


def reset_stores() -> None:
    _stores.clear()
