"""Errors that carry the status a sender should see."""

from __future__ import annotations

from typing import Any


class RemoteDxError(Exception):
    """Base of the project's errors."""


class StorageUnavailable(RemoteDxError):
    """The object store cannot take or give bytes now; the sender should retry."""


class DatabaseUnavailable(RemoteDxError):
    """The index database cannot commit now; the sender should retry."""


class InvalidInstance(RemoteDxError):
    """The received object cannot be a stored instance (corrupt, truncated, missing UIDs)."""


class UnknownDevice(RemoteDxError):
    """A calling AE title or device key that is not registered."""


class ServiceError(RemoteDxError):
    """A request the hub refuses. ``status_code`` is the HTTP answer; ``extra`` joins its body.

    The routing, worklist and reporting services raise subclasses of these; the API turns any of
    them into ``{"detail": message, **extra}`` with the status, in one handler.
    """

    status_code = 400

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra


class NotFound(ServiceError):
    """No such thing, or not visible to this user (existence is not revealed)."""

    status_code = 404


class Forbidden(ServiceError):
    status_code = 403


class Conflict(ServiceError):
    """The object's state does not allow this step now."""

    status_code = 409


class Invalid(ServiceError):
    status_code = 422
