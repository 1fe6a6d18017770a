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


@runtime_checkable
class RangedReads(Protocol):
    """A store that can read part of an object (both built-in backends; a test double may not).

    Why: a viewer asks for a large multi-frame object one frame at a time; reading only that
    frame's bytes (an HTTP Range GET on S3) instead of the whole object per request is what
    :func:`remote_dx.dicomweb.wado.stored_frames` uses it for.
    """

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes of the object from ``offset`` (fewer at its end, none past
        it); raise :class:`ObjectNotFound` when there is no object under ``key``."""


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


def validate_range(offset: int, length: int) -> None:
    """A byte range of :meth:`RangedReads.get_range`; both backends share that rule."""
    if offset < 0 or length < 0:
        raise ValueError("offset and length must not be negative")
