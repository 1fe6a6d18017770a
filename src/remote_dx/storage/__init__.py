"""Object storage: where every received byte lives (file system or S3)."""

from remote_dx.storage.base import ObjectNotFound, ObjectStore
from remote_dx.storage.factory import get_store, make_store

__all__ = ["ObjectNotFound", "ObjectStore", "get_store", "make_store"]
