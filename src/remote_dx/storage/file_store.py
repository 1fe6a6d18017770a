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

import contextlib
import hashlib
import itertools
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from remote_dx.core.errors import StorageUnavailable
from remote_dx.storage.base import ObjectNotFound, validate_key, validate_range

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
            parent, created, tmp, fd = self._open_temp(path)
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

    def _open_temp(self, path: Path) -> tuple[str, list[str], str, int]:
        """A new temporary file in ``path``'s directory, made if need be: (the directory, the
        directories made, the temporary name, its open descriptor). Raises OSError."""
        self._prepare()
        parent = str(path.parent)
        created: list[str] = []
        if not os.path.isdir(parent):
            created = _make_dirs(parent)  # only for _long keys: shards exist already
        tmp = f"{parent}/{_TMP_PREFIX}{os.getpid()}-{next(_tmp_counter)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        return parent, created, tmp, fd

    def stage(self, key: str, data: Buffer | Sequence[Buffer]) -> StagedObject:
        """Write ``data`` under ``key`` whole, visible at once, but not yet durable.

        The bytes go to a temporary file that is renamed into place, so a reader sees the old
        object or the whole new one, never part of one. Nothing is flushed: the caller runs
        :meth:`StagedObject.flush` (in another thread, beside its own index flush) and must not
        report the object stored before that returns. A power cut before then can leave the
        name pointing at a short or empty file; :meth:`verify_durable` finds and reports that.
        Used by ingest on SQLite, which then flushes the object and the index concurrently
        (bench/README.md, "Durability").
        """
        path = self._path(key)
        parts = [data] if isinstance(data, bytes | bytearray | memoryview) else list(data)
        try:
            parent, created, tmp, fd = self._open_temp(path)
            try:
                _write_all(fd, parts)
                os.replace(tmp, path)
            except BaseException:
                os.close(fd)
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            self._ready = False
            raise StorageUnavailable(f"file store cannot write {key}: {exc}") from exc
        return StagedObject(
            self, key, fd, str(path), [parent, *(os.path.dirname(d) for d in reversed(created))]
        )

    def verify_durable(self, key: str, sha256: str, size: int) -> bool:
        """True once the object under ``key`` has these contents and they are on disk.

        For a re-sent instance whose index row exists: the first attempt may have been cut
        off (crash, power cut, failed flush) after the row was committed but before the object
        was durable, or may still be flushing in another thread. The bytes are compared with
        the row's SHA-256 and size, then flushed (a no-op for the device if they already were),
        so answering "stored" after this is true. False: the caller must store the object again.
        """
        path = self._existing(key)
        if path is None:
            return False
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                digest = hashlib.sha256()
                length = 0
                while chunk := os.read(fd, 1 << 20):
                    digest.update(chunk)
                    length += len(chunk)
                if length != size or digest.hexdigest() != sha256:
                    return False
                os.fdatasync(fd)
            finally:
                os.close(fd)
            _fsync_dir(str(path.parent))
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise StorageUnavailable(f"file store cannot check {key}: {exc}") from exc
        return True

    def prepare(self) -> None:
        """Create the root and the shard directories now rather than at the first write.

        The receiver calls this when it starts: 256 directories and their parent's fsync took
        ~0.3 s on a busy machine, which the first modality's first instance would otherwise wait.
        """
        try:
            self._prepare()
        except OSError as exc:
            raise StorageUnavailable(f"file store {self.root} unusable: {exc}") from exc

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
        return self._read(key, _read_all)

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes from ``offset`` (one frame of a large multi-frame object)."""
        validate_range(offset, length)
        return self._read(key, lambda fd: _pread(fd, offset, length))

    def _read(self, key: str, read: Callable[[int], bytes]) -> bytes:
        """``read`` the object's open file: at its shard path, or where older versions kept it."""
        for path in (self._path(key), self._legacy_path(key)):
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                continue
            except OSError as exc:
                raise StorageUnavailable(f"file store cannot read {key}: {exc}") from exc
            try:
                return read(fd)
            except OSError as exc:
                raise StorageUnavailable(f"file store cannot read {key}: {exc}") from exc
            finally:
                os.close(fd)
        raise ObjectNotFound(key)

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


class StagedObject:
    """An object written by :meth:`FileStore.stage`, waiting for :meth:`flush`."""

    def __init__(self, store: FileStore, key: str, fd: int, path: str, dirs: list[str]) -> None:
        self._store = store
        self.key = key
        self._fd: int | None = fd
        self._path = path
        self._dirs = dirs

    def flush(self) -> None:
        """Make the object durable: its data, then the directory entries naming it.

        On failure the object is removed (best effort) and StorageUnavailable raised, so a
        re-send finds nothing to trust and writes it again.
        """
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            try:
                os.fdatasync(fd)
            finally:
                os.close(fd)
            for directory in self._dirs:
                _fsync_dir(directory)
        except OSError as exc:
            self._store._ready = False
            with contextlib.suppress(OSError):
                os.unlink(self._path)
            raise StorageUnavailable(f"file store cannot flush {self.key}: {exc}") from exc
        legacy = self._store._legacy_path(self.key)
        if str(legacy) != self._path and legacy.is_file():
            with contextlib.suppress(OSError):
                legacy.unlink()

    def discard(self) -> None:
        """Remove the object (the instance it belongs to was refused)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(self._path)


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


def _read_all(fd: int) -> bytes:
    with open(fd, "rb", closefd=False) as file:
        return file.read()


def _pread(fd: int, offset: int, length: int) -> bytes:
    parts: list[bytes] = []
    done = 0
    while done < length:  # pread may return less than asked (2 GiB cap on Linux)
        chunk = os.pread(fd, length - done, offset + done)
        if not chunk:
            break
        parts.append(chunk)
        done += len(chunk)
    return b"".join(parts)
