"""Which files in a cart's export folder make one ECG upload.

One upload is one ECG (the hub's contract): a DICOM waveform, an XML or a CSV file on its own, or
a WFDB record — its ``.hea`` header together with the signal file(s) the header names (WFDB
"header(5)": the first field of each signal line is the signal file's name).

Folders are walked recursively. Ignored without comment: hidden names (``.rdx`` — our own journal
— included), editor/backup/partial-download names (``~``, ``.tmp``, ``.part``, ``.crdownload``…).
Skipped with a note: other files with an extension no reader accepts (PDF printouts, WFDB
annotation files such as LUDB's ``1.i``). Extensionless files are taken when they carry the DICOM
preamble magic (``DICM`` at byte 128, PS3.10 §7.1), as some carts write them so. A file named
explicitly on the command line is always sent (the hub judges it).

In watch mode a file is taken only once its size and modification time have not changed for
``settle_seconds`` (a cart or a network copy may still be writing it); see ``Settle``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePath

ECG_SUFFIXES = frozenset({".dcm", ".dicom", ".xml", ".csv", ".tsv", ".hea", ".dat"})
IGNORED_SUFFIXES = frozenset(
    {
        ".tmp",
        ".temp",
        ".part",
        ".partial",
        ".crdownload",
        ".download",
        ".swp",
        ".swx",
        ".lock",
        ".lck",
        ".bak",
        ".old",
        ".ini",
        ".db",
        ".lnk",
    }
)
_DICOM_MAGIC_OFFSET = 128


@dataclass(frozen=True)
class Export:
    """The files of one ECG, in upload order (a WFDB header first, then its signal files)."""

    parts: tuple[Path, ...]

    @property
    def label(self) -> str:
        return "+".join(p.name for p in self.parts)


@dataclass
class Found:
    """The result of grouping: complete ECGs, incomplete ones (with why) and skipped files."""

    exports: list[Export] = field(default_factory=list)
    incomplete: list[tuple[Path, str]] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)


def ignored(name: str) -> bool:
    """Hidden, backup or still-downloading names: never ours to send."""
    lowered = name.lower()
    return (
        name.startswith(".")
        or name.startswith("~$")
        or name.endswith("~")
        or PurePath(lowered).suffix in IGNORED_SUFFIXES
    )


def _has_dicom_magic(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            handle.seek(_DICOM_MAGIC_OFFSET)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def walk(folder: Path) -> Iterable[Path]:
    """Files under ``folder`` (recursive, sorted), hidden folders and ignored names left out."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:  # a network share gone away: the next rescan tries again
        return
    for entry in entries:
        if ignored(entry.name):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                yield from walk(Path(entry.path))
            elif entry.is_file():
                yield Path(entry.path)
        except OSError:
            continue


def wfdb_signal_files(header: Path) -> list[str] | None:
    """Names of the signal files a WFDB header refers to, or None when it cannot tell
    (unreadable, multi-segment or malformed header: the same-stem ``.dat`` is assumed then)."""
    try:
        text = header.read_text(encoding="latin-1")
    except OSError:
        return None
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    if not lines:
        return None
    record = lines[0].split()
    if "/" in record[0]:  # "name/n_segments": a multi-segment record
        return None
    try:
        n_signals = int(record[1]) if len(record) > 1 else 0
    except ValueError:
        return None
    names: list[str] = []
    for line in lines[1 : 1 + n_signals]:
        name = line.split()[0]
        # "~" marks a signal with no file; a path outside the header's folder is not ours.
        if name != "~" and PurePath(name).name == name and name not in names:
            names.append(name)
    return names or None


def collect(paths: Iterable[Path]) -> tuple[list[Path], set[Path], list[Path]]:
    """Candidate files under ``paths``: (candidates, named explicitly, skipped).

    Files a WFDB header names are added even with an unusual extension, and a ``.dat``'s
    same-stem ``.hea`` is added, so naming either half of a record on the command line works.
    """
    candidates: dict[Path, None] = {}
    explicit: set[Path] = set()
    skipped: list[Path] = []
    for path in paths:
        if path.is_dir():
            for child in walk(path):
                if child.suffix.lower() in ECG_SUFFIXES or (
                    not child.suffix and _has_dicom_magic(child)
                ):
                    candidates[child] = None
                else:
                    skipped.append(child)
        else:
            candidates[path] = None
            explicit.add(path)
    for path in list(candidates):
        suffix = path.suffix.lower()
        if suffix == ".hea":
            for name in wfdb_signal_files(path) or [path.stem + ".dat"]:
                sibling = path.with_name(name)
                if sibling.is_file():
                    candidates.setdefault(sibling, None)
        elif suffix == ".dat":
            header = path.with_suffix(".hea")
            if header.is_file():
                candidates.setdefault(header, None)
    claimed = set(candidates)
    return list(candidates), explicit, [p for p in skipped if p not in claimed]


def group(files: Iterable[Path], *, waiting_words: bool = False) -> Found:
    """Group available ``files`` into uploads. A WFDB header whose signal files are not all in
    ``files`` is incomplete, as is a ``.dat`` no header claims; ``waiting_words`` phrases the
    reason for watch mode (the missing part may still come)."""
    available = list(dict.fromkeys(files))
    present = set(available)
    found = Found()
    claimed: set[Path] = set()
    for header in (p for p in available if p.suffix.lower() == ".hea"):
        names = wfdb_signal_files(header) or [header.stem + ".dat"]
        signals = [header.with_name(name) for name in names]
        missing = [s.name for s in signals if s not in present]
        claimed.update(s for s in signals if s in present)
        claimed.add(header)
        if missing:
            verb = "waiting for" if waiting_words else "missing"
            found.incomplete.append(
                (header, f"WFDB record {verb} signal file(s) {', '.join(missing)}")
            )
        else:
            found.exports.append(Export((header, *signals)))
    for path in available:
        if path in claimed:
            continue
        if path.suffix.lower() == ".dat":
            verb = "waiting for" if waiting_words else "has no"
            found.incomplete.append((path, f"WFDB signal file {verb} its header {path.stem}.hea"))
        else:
            found.exports.append(Export((path,)))
    return found


class Settle:
    """Tells when a file has stopped changing: same (size, mtime) for ``seconds`` and not empty.

    Partially written exports must not be sent: a truncated ECG would be rejected (or, worse,
    accepted short). A file whose signature changes starts its quiet period again.
    """

    def __init__(self, seconds: float, clock=time.monotonic) -> None:
        self.seconds = seconds
        self._clock = clock
        self._since: dict[Path, tuple[int, int, float]] = {}

    def stable(self, path: Path) -> bool:
        try:
            stat = path.stat()
        except OSError:
            self._since.pop(path, None)
            return False
        now = self._clock()
        signature = (stat.st_size, stat.st_mtime_ns)
        previous = self._since.get(path)
        if previous is None or previous[:2] != signature:
            self._since[path] = (*signature, now)
            return self.seconds <= 0 and stat.st_size > 0
        return stat.st_size > 0 and now - previous[2] >= self.seconds

    def pending(self) -> bool:
        """Whether some file seen is still inside its quiet period (worth a quick rescan)."""
        now = self._clock()
        return any(now - since < self.seconds for _, _, since in self._since.values())

    def forget(self, keep: Iterable[Path]) -> None:
        """Drop files no longer present (or already handled) from the tracker."""
        keep_set = set(keep)
        for path in list(self._since):
            if path not in keep_set:
                del self._since[path]
