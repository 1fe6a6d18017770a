"""The :class:`ObjectStore` protocol every backend implements.

``put`` returns only once the bytes are durable (fsync'd or acknowledged by the S3 server), which
is what lets the receiver answer C-STORE success. Any failure of the backend itself surfaces as
:class:`~remote_dx.core.errors.StorageUnavailable` so callers can answer "retry later".
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, runtime_checkable

from remote_dx.core.errors import RemoteDxError


class ObjectNotFound(RemoteDxError, KeyError):
    """No object under that key."""


@runtime_checkable
class ObjectStore(Protocol):
    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        """Store ``data`` under ``key`` durably, replacing any previous object."""

    def get(self, key: str) -> bytes:
        """Return the object's bytes or raise :class:`ObjectNotFound`."""

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None:
        """Remove the object; removing a missing key is not an error."""

    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys under ``prefix``, in lexical order."""

    def check(self) -> None:
        """Raise StorageUnavailable unless the store can be used now (readiness probe)."""


def validate_key(key: str) -> str:
    """Keys are relative POSIX paths without ``..``; both backends share that rule."""
    if (
        not key
        or key.startswith("/")
        or "\\" in key
        or any(part in ("", ".", "..") for part in key.split("/"))
    ):
        raise ValueError(f"invalid object key: {key!r}")
    return key
