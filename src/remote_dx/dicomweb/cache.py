"""Recently read objects' bytes, per object store, bounded in total size."""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from typing import Any

from remote_dx.storage.base import ObjectStore


class ObjectCache:
    """The bytes of recently read objects, bounded in total size (thread-safe).

    A viewer asks for a multi-frame object one frame at a time; without this every frame would
    read the whole object from the store again (from S3: the whole object over the network).
    Stored instances never change under their key (a re-sent SOP Instance UID is not rewritten),
    so a cached copy cannot go stale.
    """

    def __init__(self, max_bytes: int = 256 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def get(self, store: ObjectStore, key: str) -> bytes:
        with self._lock:
            data = self._items.get(key)
            if data is not None:
                self._items.move_to_end(key)
                return data
        data = store.get(key)
        if len(data) <= self.max_bytes // 4:
            with self._lock:
                if key not in self._items:
                    self._items[key] = data
                    self._size += len(data)
                    while self._size > self.max_bytes:
                        _, dropped = self._items.popitem(last=False)
                        self._size -= len(dropped)
        return data


_objects: weakref.WeakKeyDictionary[Any, ObjectCache] = weakref.WeakKeyDictionary()
_objects_lock = threading.Lock()


def _cache_for(store: ObjectStore) -> ObjectCache:
    with _objects_lock:
        cache = _objects.get(store)
        if cache is None:
            cache = _objects[store] = ObjectCache()
        return cache


def cached_get(store: ObjectStore, key: str) -> bytes:
    """``store.get(key)`` through the store's cache (raises ObjectNotFound like the store)."""
    return _cache_for(store).get(store, key)
