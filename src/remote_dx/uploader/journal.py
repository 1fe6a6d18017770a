"""The uploader's durable state: a journal of small files in the queue directory.

Plain files rather than SQLite because the export folder (and with it the default queue
directory ``<dir>/.rdx/``) is often a network share, where SQLite's locking and WAL are unsafe;
every write here is "write a temporary file, fsync, rename", which shares do atomically.

Layout (``key`` is the upload's identity, ``export_key()``: sha256 over part names + contents)::

    lock                      held (flock / msvcrt) by the one uploader using this directory
    queue/<key>.json          an ECG waiting for delivery: part names, form fields, sources
    spool/<key>/<part>        the exact bytes to send (copied and verified against the key)
    done/<kk>/<key>.json      delivered (with the hub's study_uid) or rejected (status, detail)
    rejected/<name>           watch mode: the rejected originals, moved aside, and
    rejected/<name>.reason.txt  why the hub refused them (for the technician)
    seen.json                 cache path → (size, mtime, key) so rescans do not re-hash

Order of writes, so that a crash at any point neither loses nor duplicates an ECG:
spool (fsync'd) → queue entry; on delivery, done record (fsync'd) → queue entry and spool
removed. ``recover()`` at start removes spool folders without a queue entry and queue entries
whose done record says delivered.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

KEY_VERSION = b"remote-dx-ecg-upload/1\n"
_CHUNK = 1 << 20


class JournalBusy(RuntimeError):
    """Another uploader holds this queue directory."""


class SourceChanged(RuntimeError):
    """A file changed while it was being copied into the spool."""


def export_key(parts: Sequence[tuple[str, str]]) -> str:
    """Identity of one upload: sha256 over ``name<TAB>sha256(content)`` of each part, in order.

    It is also sent as the ``Idempotency-Key`` header, so the hub can recognise a repeat.
    """
    digest = hashlib.sha256(KEY_VERSION)
    for name, content_sha in parts:
        digest.update(f"{name}\t{content_sha}\n".encode())
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(folder: Path) -> None:
    if os.name == "nt":  # directories cannot be opened for fsync on Windows; NTFS journals them
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some network file systems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so a reader sees the old or the new content, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with temporary.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    _fsync_dir(path.parent)


def _copy_hashing(source: BinaryIO, target: BinaryIO) -> str:
    digest = hashlib.sha256()
    while chunk := source.read(_CHUNK):
        digest.update(chunk)
        target.write(chunk)
    target.flush()
    os.fsync(target.fileno())
    return digest.hexdigest()


@dataclass
class Entry:
    """One queued ECG upload."""

    key: str
    parts: list[str]
    sources: list[str]
    fields: dict[str, str] = field(default_factory=dict)
    queued_at: float = 0.0

    @property
    def label(self) -> str:
        return "+".join(self.parts)

    def to_json(self) -> bytes:
        return json.dumps(self.__dict__, ensure_ascii=False, indent=1).encode()


class Journal:
    """The queue directory of one uploader (see the module docstring for the layout)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.queue_dir = root / "queue"
        self.spool_dir = root / "spool"
        self.done_dir = root / "done"
        self.rejected_dir = root / "rejected"
        self._lock_handle: Any = None
        self._seen: dict[str, list[Any]] = {}
        self._seen_dirty = False

    # -- lifetime ---------------------------------------------------------------------------

    def open(self) -> Journal:
        """Create the folders, take the lock (JournalBusy if held) and recover from a crash."""
        for folder in (self.queue_dir, self.spool_dir, self.done_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self._lock()
        self.recover()
        self._seen = self._load_seen()
        return self

    def close(self) -> None:
        self.save_seen()
        if self._lock_handle is not None:
            self._lock_handle.close()
            self._lock_handle = None

    def __enter__(self) -> Journal:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _lock(self) -> None:
        handle = (self.root / "lock").open("a+b")
        try:
            if os.name == "nt":
                import msvcrt

                msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
            else:
                import fcntl

                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            handle.close()
            raise JournalBusy(
                f"another remote-dx upload-ecg is already using the queue in {self.root}"
            ) from exc
        except OSError:
            pass  # a file system without locks: run unlocked rather than not at all
        self._lock_handle = handle

    def recover(self) -> None:
        """Finish or undo whatever a crash interrupted (see the module docstring)."""
        for path in self.queue_dir.glob(".*.tmp"):
            path.unlink(missing_ok=True)
        for path in self.queue_dir.glob("*.json"):
            record = self.done_record(path.stem)
            if record is not None and record.get("outcome") == "delivered":
                self.forget(path.stem)
        for folder in self.spool_dir.iterdir():
            if not (self.queue_dir / f"{folder.name}.json").exists():
                shutil.rmtree(folder, ignore_errors=True)

    # -- queries ----------------------------------------------------------------------------

    def _done_path(self, key: str) -> Path:
        return self.done_dir / key[:2] / f"{key}.json"

    def done_record(self, key: str) -> dict[str, Any] | None:
        try:
            return json.loads(self._done_path(key).read_bytes())
        except (OSError, ValueError):
            return None

    def state(self, key: str) -> str | None:
        """``queued``, ``delivered``, ``rejected`` or None (never seen)."""
        if (self.queue_dir / f"{key}.json").exists():
            return "queued"
        record = self.done_record(key)
        return None if record is None else str(record.get("outcome"))

    def entries(self) -> list[Entry]:
        """Queued uploads, STAT first, then oldest first."""
        found = []
        for path in self.queue_dir.glob("*.json"):
            try:
                found.append(Entry(**json.loads(path.read_bytes())))
            except (OSError, ValueError, TypeError):
                continue  # half-written by a crashed run of an older version: not ours to guess
        found.sort(key=lambda e: (e.fields.get("priority", "").lower() != "stat", e.queued_at))
        return found

    def spooled(self, entry: Entry) -> list[Path]:
        return [self.spool_dir / entry.key / name for name in entry.parts]

    # -- changes ----------------------------------------------------------------------------

    def enqueue(
        self, key: str, parts: Sequence[Path], fields: dict[str, str], sources: Sequence[Path]
    ) -> Entry:
        """Copy ``parts`` into the spool, check they still hash to ``key``, then queue them.

        SourceChanged when the files changed since they were hashed (the caller tries later).
        """
        folder = self.spool_dir / key
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        digests = []
        for part in parts:
            with part.open("rb") as source, (folder / part.name).open("wb") as target:
                digests.append((part.name, _copy_hashing(source, target)))
        _fsync_dir(folder)
        if export_key(digests) != key:
            shutil.rmtree(folder, ignore_errors=True)
            raise SourceChanged(f"{parts[0].name} changed while being read")
        entry = Entry(
            key=key,
            parts=[p.name for p in parts],
            sources=[str(p) for p in sources],
            fields=dict(fields),
            queued_at=time.time(),
        )
        write_atomic(self.queue_dir / f"{key}.json", entry.to_json())
        return entry

    def record_delivered(self, entry: Entry, study_uid: str | None, answer: dict[str, Any]) -> None:
        """Durably note the delivery, and only then drop the queue entry and the spool copy."""
        self._record(entry, {"outcome": "delivered", "study_uid": study_uid, "answer": answer})
        self.forget(entry.key)

    def record_rejected(self, entry: Entry, status: int, detail: str) -> None:
        self._record(entry, {"outcome": "rejected", "status": status, "detail": detail})
        self.forget(entry.key)

    def _record(self, entry: Entry, outcome: dict[str, Any]) -> None:
        record = {
            **outcome,
            "key": entry.key,
            "parts": entry.parts,
            "sources": entry.sources,
            "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        write_atomic(self._done_path(entry.key), json.dumps(record, ensure_ascii=False).encode())

    def forget(self, key: str) -> None:
        (self.queue_dir / f"{key}.json").unlink(missing_ok=True)
        shutil.rmtree(self.spool_dir / key, ignore_errors=True)

    def move_aside(self, entry: Entry, reason: str) -> list[Path]:
        """Move a rejected ECG's original files into ``rejected/`` with a ``.reason.txt``."""
        self.rejected_dir.mkdir(parents=True, exist_ok=True)
        moved = []
        for source in map(Path, entry.sources):
            if not source.is_file():
                continue
            target = self.rejected_dir / source.name
            if target.exists():
                target = self.rejected_dir / f"{source.stem}.{entry.key[:8]}{source.suffix}"
            with contextlib.suppress(OSError):
                shutil.move(str(source), target)
                moved.append(target)
        note = moved[0] if moved else self.rejected_dir / entry.parts[0]
        write_atomic(note.with_name(note.name + ".reason.txt"), (reason + "\n").encode())
        return moved

    # -- seen cache -------------------------------------------------------------------------

    def _load_seen(self) -> dict[str, list[Any]]:
        try:
            value = json.loads((self.root / "seen.json").read_bytes())
            return value if isinstance(value, dict) else {}
        except (OSError, ValueError):
            return {}

    def cached_key(self, parts: Sequence[Path]) -> str | None:
        """The key computed earlier for exactly these unchanged files, if any."""
        keys = set()
        for part in parts:
            try:
                stat = part.stat()
            except OSError:
                return None
            cached = self._seen.get(str(part))
            if not cached or cached[:2] != [stat.st_size, stat.st_mtime_ns]:
                return None
            keys.add(cached[2])
        return keys.pop() if len(keys) == 1 else None

    def remember(self, parts: Sequence[Path], key: str) -> None:
        for part in parts:
            with contextlib.suppress(OSError):
                stat = part.stat()
                self._seen[str(part)] = [stat.st_size, stat.st_mtime_ns, key]
                self._seen_dirty = True

    def prune_seen(self, present: set[Path]) -> None:
        for name in [n for n in self._seen if Path(n) not in present]:
            del self._seen[name]
            self._seen_dirty = True

    def save_seen(self) -> None:
        if self._seen_dirty:
            with contextlib.suppress(OSError):
                write_atomic(self.root / "seen.json", json.dumps(self._seen).encode())
            self._seen_dirty = False


def iter_parts(journal: Journal, entry: Entry) -> Iterator[tuple[str, Path]]:
    yield from zip(entry.parts, journal.spooled(entry), strict=True)
