"""The embedded default: objects as files under ``<data_dir>/objects``.

Durability: an object is written to a temporary file beside its final name, fdatasync'd, renamed
into place and the directory fsync'd, so an acknowledged object survives a power cut and a reader
never sees half a file (PS3.4 B.2.3's success status means "stored"; the receiver answers it only
after :meth:`FileStore.put` returns).

Layout: ``<root>/<shard>/<name>``, where ``<shard>`` is two hex digits of a hash of the key and
``<name>`` is the key with ``%`` and ``/`` percent-encoded (``dicom%2F1.2…%2F1.2…dcm``). The 256
shard directories are made once; a key-shaped tree (``dicom/<study>/<series>/``) would instead
create two directories for every new study, and making a new directory durable costs an fsync
of its parent — on this ext4 VM every fsync is a device flush of 0.5–3 ms, so a 12-lead ECG (one
study each) paid three flushes more than the file itself. Keys too long for one file name (over
~250 bytes encoded) keep the key-shaped tree under ``<root>/_long/``. Files at the key path itself
(``<root>/<key>``, the layout before sharding) are still read, listed and deleted.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from remote_dx.core.errors import StorageUnavailable
from remote_dx.storage.base import ObjectNotFound, validate_key

Buffer = bytes | bytearray | memoryview

_SHARDS = [f"{index:02x}" for index in range(256)]
_LONG = "_long"
_MAX_NAME = 250  # bytes; ext4 and most file systems allow 255
_TMP_PREFIX = ".tmp-"
_tmp_counter = itertools.count()


def _encode(key: str) -> str:
    name = key.replace("%", "%25").replace("/", "%2F")
    return "%2E" + name[1:] if name.startswith(".") else name


def _decode(name: str) -> str:
    return name.replace("%2F", "/").replace("%2E", ".").replace("%25", "%")


class FileStore:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self._ready = False
        self._lock = threading.Lock()

    # -- paths ---------------------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        """Where ``key`` is (or will be) stored."""
        validate_key(key)
        name = _encode(key)
        if len(name.encode()) > _MAX_NAME:
            return self.root / _LONG / key
        shard = hashlib.blake2s(key.encode(), digest_size=1).hexdigest()
        return self.root / shard / name

    def _legacy_path(self, key: str) -> Path:
        return self.root / key

    def _existing(self, key: str) -> Path | None:
        for path in (self._path(key), self._legacy_path(key)):
            if path.is_file():
                return path
        return None

    # -- writing -------------------------------------------------------------------------------

    def put(
        self,
        key: str,
        data: Buffer | Sequence[Buffer],
        content_type: str = "application/octet-stream",
    ) -> None:
        """Store ``data`` (bytes, or buffers written back to back) durably under ``key``."""
        path = self._path(key)
        parts = [data] if isinstance(data, bytes | bytearray | memoryview) else list(data)
        try:
            self._prepare()
            parent = str(path.parent)
            created: list[str] = []
            if not os.path.isdir(parent):
                created = _make_dirs(parent)  # only for _long keys: shards exist already
            tmp = f"{parent}/{_TMP_PREFIX}{os.getpid()}-{next(_tmp_counter)}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                try:
                    _write_all(fd, parts)
                    os.fdatasync(fd)
                finally:
                    os.close(fd)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            _fsync_dir(parent)
            for directory in reversed(created):
                _fsync_dir(os.path.dirname(directory))
            legacy = self._legacy_path(key)
            if legacy != path and legacy.is_file():
                legacy.unlink()  # the new copy replaces the one in the old layout
        except OSError as exc:
            self._ready = False  # look at the directories again next time
            raise StorageUnavailable(f"file store cannot write {key}: {exc}") from exc

    def _prepare(self) -> None:
        """Create the root and the shard directories once, durably."""
        if self._ready:
            return
        with self._lock:
            if self._ready:
                return
            root = str(self.root)
            created = _make_dirs(root) if not os.path.isdir(root) else []
            made_shard = False
            for shard in _SHARDS:
                try:
                    os.mkdir(os.path.join(root, shard))
                    made_shard = True
                except FileExistsError:
                    if not os.path.isdir(os.path.join(root, shard)):
                        raise
            if made_shard:
                _fsync_dir(root)
            for directory in reversed(created):
                _fsync_dir(os.path.dirname(directory))
            self._ready = True

    # -- reading -------------------------------------------------------------------------------

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            pass
        except OSError as exc:
            raise StorageUnavailable(f"file store cannot read {key}: {exc}") from exc
        try:
            return self._legacy_path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            raise ObjectNotFound(key) from exc
        except OSError as exc:
            raise StorageUnavailable(f"file store cannot read {key}: {exc}") from exc

    def exists(self, key: str) -> bool:
        return self._existing(key) is not None

    def delete(self, key: str) -> None:
        try:
            for path in (self._path(key), self._legacy_path(key)):
                if path.is_file():
                    path.unlink(missing_ok=True)
        except OSError as exc:
            raise StorageUnavailable(f"file store cannot delete {key}: {exc}") from exc

    def list(self, prefix: str = "") -> Iterator[str]:
        if not self.root.is_dir():
            return iter(())
        keys: set[str] = set()
        for path in self.root.rglob("*"):
            if path.name.startswith(_TMP_PREFIX) or not path.is_file():
                continue
            relative = path.relative_to(self.root)
            parts = relative.parts
            if len(parts) == 2 and parts[0] in _SHARD_SET:
                keys.add(_decode(parts[1]))
            elif parts[0] == _LONG and len(parts) > 1:
                keys.add(Path(*parts[1:]).as_posix())
            else:
                keys.add(relative.as_posix())  # the layout before sharding
        return iter(sorted(key for key in keys if key.startswith(prefix)))

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            if not os.access(self.root, os.W_OK):
                raise StorageUnavailable(f"file store {self.root} is not writable")
        except OSError as exc:
            raise StorageUnavailable(f"file store {self.root} unusable: {exc}") from exc


_SHARD_SET = frozenset(_SHARDS)


def _make_dirs(directory: str) -> list[str]:
    """Make ``directory`` and its missing parents; return those created, outermost first."""
    missing: list[str] = []
    current = directory
    while not os.path.isdir(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    created: list[str] = []
    for folder in reversed(missing):
        try:
            os.mkdir(folder)
            created.append(folder)
        except FileExistsError:
            if not os.path.isdir(folder):
                raise
    return created


def _write_all(fd: int, parts: list[Buffer]) -> None:
    views = [memoryview(part).cast("B") for part in parts if len(part)]
    while views:
        written = os.writev(fd, views)
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if views and written:
            views[0] = views[0][written:]


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
