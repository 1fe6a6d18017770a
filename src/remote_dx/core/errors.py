"""Errors that carry the status a sender should see."""

from __future__ import annotations


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
