"""``remote-dx upload-ecg``: find ECG exports, queue them durably, deliver each exactly once.

One-shot (``FILE|DIR...``): every ECG found is queued, then the whole queue (including what an
earlier run left) is delivered; when the hub is unreachable a few attempts are made with backoff
and whatever remains stays queued for the next run. Exit status: 0 only if everything was
delivered, 1 if some file was bad or left queued, 2 if nothing was found or the queue is in use,
3 if the hub refused our configuration (credentials, role, URL).

Watch (``--watch DIR...``): watchdog events, plus a periodic rescan because SMB/NFS shares often
deliver no events, wake the loop; a file is taken once it has settled (``exports.Settle``);
delivery retries with exponential backoff and full jitter (capped, default 5 min) for as long as
the hub is unreachable; rejected files are moved into ``<queue>/rejected/`` with the reason.
SIGINT/SIGTERM stop it between uploads; a crash (even ``kill -9``) loses nothing (``journal``).

Exactly once: an ECG is identified by its parts' names and contents (``journal.export_key``);
a key already delivered is never sent again. The one window left — the hub stored the ECG but
the uploader died (or the connection broke) before recording the 201 — is closed by the hub
honouring ``Idempotency-Key`` (and, for DICOM, by the SOP Instance UID); a hub that ignores the
header may then store a non-DICOM ECG twice.
"""

from __future__ import annotations

import contextlib
import random
import signal
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from remote_dx.uploader.exports import Export, Settle, collect, group
from remote_dx.uploader.hub import (
    Delivered,
    HubClient,
    HubRefused,
    Rejected,
    Unavailable,
)
from remote_dx.uploader.journal import (
    Entry,
    Journal,
    JournalBusy,
    SourceChanged,
    export_key,
    file_sha256,
    iter_parts,
)

EXIT_OK, EXIT_INCOMPLETE, EXIT_USAGE, EXIT_REFUSED = 0, 1, 2, 3


@dataclass
class Backoff:
    """Exponential backoff with full jitter (delay drawn from [base·2ⁿ/2, base·2ⁿ], capped):
    township PCs restarting together after a county outage must not hit the hub in step."""

    base: float = 1.0
    cap: float = 300.0
    rng: random.Random = field(default_factory=random.Random)
    failures: int = 0

    def next_delay(self, at_least: float | None = None) -> float:
        ceiling = min(self.cap, self.base * (2 ** min(self.failures, 30)))
        self.failures += 1
        delay = self.rng.uniform(ceiling / 2, ceiling)
        return min(self.cap, max(delay, at_least or 0.0))

    def reset(self) -> None:
        self.failures = 0


class Reporter:
    """Lines for the technician (stderr): plain text, or with a rich progress bar on a TTY."""

    def __init__(self, console: Any = None) -> None:
        if console is None:
            from rich.console import Console

            console = Console(stderr=True, highlight=False)
        self.console = console
        self._bar: Any = None
        self._task: Any = None

    def line(self, text: str, style: str | None = None) -> None:
        target = self._bar.console if self._bar is not None else self.console
        target.print(text, style=style, markup=False, soft_wrap=True)

    def start_progress(self, total: int) -> None:
        if not (self.console.is_terminal and total):
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self._bar = Progress(
            TextColumn("ECG upload"), BarColumn(), MofNCompleteColumn(), console=self.console
        )
        self._task = self._bar.add_task("upload", total=total)
        self._bar.start()

    def advance(self) -> None:
        if self._bar is not None:
            self._bar.advance(self._task)

    def stop_progress(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


@dataclass
class Tally:
    delivered: int = 0
    already: int = 0
    rejected: int = 0
    bad: int = 0
    skipped: int = 0


class Uploader:
    """Queue ECG exports into a ``Journal`` and deliver them through a ``HubClient``."""

    def __init__(
        self,
        journal: Journal,
        client: HubClient,
        *,
        fields: dict[str, str] | None = None,
        watch: bool = False,
        settle_seconds: float = 1.0,
        rescan_seconds: float = 10.0,
        backoff: Backoff | None = None,
        reporter: Reporter | None = None,
        sleep: Callable[[float], object] | None = None,
    ) -> None:
        self.journal = journal
        self.client = client
        self.fields = {k: v for k, v in (fields or {}).items() if v}
        self.watch = watch
        self.settle = Settle(settle_seconds)
        self.rescan_seconds = rescan_seconds
        self.backoff = backoff or Backoff()
        self.report = reporter or Reporter()
        self.tally = Tally()
        self.scans = 0
        self._hub_wait_until = 0.0
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._sleep = sleep
        self._told: set[Path] = set()

    # -- finding and queueing ---------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to end after the current upload (signal handlers, tests)."""
        self._stopping.set()
        self._wake.set()

    def ingest(self, export: Export) -> str | None:
        """Queue one ECG unless its key is known; answers the key's state before (or None when
        the files changed while being read)."""
        key = self.journal.cached_key(export.parts)
        if key is None:
            try:
                key = export_key([(p.name, file_sha256(p)) for p in export.parts])
            except OSError as exc:
                self._bad(export.parts[0], f"cannot read: {exc}")
                return None
        state = self.journal.state(key)
        if state == "rejected" and not self.watch:
            state = None  # named again on the command line: the user wants another try
        if state is not None:
            self.journal.remember(export.parts, key)
            if state == "delivered" and not self.watch:
                record = self.journal.done_record(key) or {}
                self.tally.already += 1
                self.report.line(
                    f"already delivered {export.label} (study {record.get('study_uid')})"
                )
            elif state == "rejected":
                self._move_rejected_again(key)
            return state
        try:
            self.journal.enqueue(key, export.parts, self.fields, export.parts)
        except SourceChanged:
            if not self.watch:
                self._bad(export.parts[0], "changed while being read; try again")
            return None
        except OSError as exc:
            self._bad(export.parts[0], f"cannot read: {exc}")
            return None
        self.journal.remember(export.parts, key)
        return "new"

    def _move_rejected_again(self, key: str) -> None:
        record = self.journal.done_record(key) or {}
        entry = Entry(key=key, parts=record.get("parts", []), sources=record.get("sources", []))
        if entry.parts and any(Path(s).is_file() for s in entry.sources):
            self.journal.move_aside(entry, _reason_text(record.get("status"), record.get("detail")))

    def _bad(self, path: Path, reason: str) -> None:
        self.tally.bad += 1
        self.report.line(f"BAD {path}: {reason}", style="red")

    def scan(self, paths: Sequence[Path]) -> None:
        """Find exports under ``paths`` and queue the new ones (watch mode: settled ones only)."""
        self.scans += 1
        candidates, _explicit, skipped = collect(paths)
        if self.watch:
            self.settle.forget(candidates)
            ready = [p for p in candidates if self.settle.stable(p)]
            found = group(ready, waiting_words=True)
            self.journal.prune_seen(set(candidates))
            for path, reason in found.incomplete:
                if path not in self._told and self.settle.stable(path):
                    self._told.add(path)
                    self.report.line(f"waiting: {path}: {reason}", style="yellow")
        else:
            found = group(candidates)
            for path, reason in found.incomplete:
                self._bad(path, reason)
            self.tally.skipped += len(skipped)
        for export in found.exports:
            if self._stopping.is_set():
                break
            state = self.ingest(export)
            if state == "new" and self.watch:
                self.report.line(f"queued {export.label}")
        self.journal.save_seen()

    # -- delivering -------------------------------------------------------------------------

    def deliver(self) -> bool:
        """Send every queued ECG, oldest first; False when the hub is unreachable (the rest
        wait for the backoff). HubRefused propagates."""
        for entry in self.journal.entries():
            if self._stopping.is_set():
                return True
            parts = list(iter_parts(self.journal, entry))
            if not all(path.is_file() for _, path in parts):
                # The spool copy is gone (cleaned by hand?): forget the entry; the originals,
                # if still there, are queued again by the next scan.
                self.journal.forget(entry.key)
                self.report.line(f"spool copy of {entry.label} missing; dropped from the queue")
                continue
            try:
                outcome = self.client.upload(parts, entry.fields, entry.key)
            except OSError as exc:  # the spool itself unreadable: a local problem, retry later
                outcome = Unavailable(f"cannot read the spooled {entry.label}: {exc}")
            if isinstance(outcome, Delivered):
                self.journal.record_delivered(entry, outcome.study_uid, outcome.answer)
                self.backoff.reset()
                self.tally.delivered += 1
                self.report.line(f"delivered {entry.label} → study {outcome.study_uid}")
                self.report.advance()
            elif isinstance(outcome, Rejected):
                reason = _reason_text(outcome.status, outcome.detail)
                self.journal.record_rejected(entry, outcome.status, outcome.detail)
                self.backoff.reset()
                self.tally.rejected += 1
                where = ""
                if self.watch:
                    self.journal.move_aside(entry, reason)
                    where = f" (moved to {self.journal.rejected_dir})"
                self.report.line(f"REJECTED {entry.label}: {reason}{where}", style="red")
                self.report.advance()
            else:
                assert isinstance(outcome, Unavailable)
                delay = self.backoff.next_delay(outcome.retry_after)
                self._hub_wait_until = time.monotonic() + delay
                queued = len(self.journal.entries())
                self.report.line(
                    f"hub unreachable ({outcome.reason}); {queued} ECG(s) queued in "
                    f"{self.journal.root}, next try in {delay:.0f} s",
                    style="yellow",
                )
                return False
        return True

    def run_once(self, paths: Sequence[Path], attempts: int = 4) -> int:
        """One-shot mode; answers the exit status (see the module docstring)."""
        self.scan(paths)
        pending = self.journal.entries()
        if not pending and not (self.tally.already or self.tally.bad):
            self.report.line(f"no ECG files found in {', '.join(map(str, paths))}", style="red")
            return EXIT_USAGE
        self.report.start_progress(len(pending))
        try:
            for attempt in range(1, max(1, attempts) + 1):
                if self.deliver() or self._stopping.is_set() or attempt == attempts:
                    break
                self._pause(self._hub_wait_until - time.monotonic())
        finally:
            self.report.stop_progress()
        left = len(self.journal.entries())
        tally = self.tally
        summary = f"{tally.delivered} ECG(s) delivered to {self.client.hub}"
        if tally.already:
            summary += f", {tally.already} delivered earlier"
        if tally.rejected or tally.bad:
            summary += f", {tally.rejected + tally.bad} bad"
        if left:
            summary += f", {left} still queued in {self.journal.root} (run again or use --watch)"
        if tally.skipped:
            summary += f"; {tally.skipped} other file(s) skipped"
        ok = not (left or tally.rejected or tally.bad)
        self.report.line(summary, style="green" if ok else "red")
        return EXIT_OK if ok else EXIT_INCOMPLETE

    def _pause(self, seconds: float) -> None:
        if seconds <= 0:
            return
        if self._sleep is not None:
            self._sleep(seconds)
        else:
            self._wake.wait(seconds)
            if not self._stopping.is_set():
                self._wake.clear()

    def run_watch(self, folders: Sequence[Path]) -> None:
        """Watch mode until ``stop()``; HubRefused propagates."""
        observer = _start_observer(folders, self._wake, self.journal.root)
        self.report.line(
            f"watching {', '.join(map(str, folders))} → {self.client.hub} "
            f"(queue {self.journal.root}, {len(self.journal.entries())} queued)"
            + ("" if observer else "; no file events, rescanning only")
        )
        next_scan = 0.0
        try:
            while not self._stopping.is_set():
                now = time.monotonic()
                if self._wake.is_set() or now >= next_scan or self.settle.pending():
                    self._wake.clear()
                    self.scan(folders)
                    next_scan = time.monotonic() + self.rescan_seconds
                if time.monotonic() >= self._hub_wait_until:
                    self.deliver()
                deadline = next_scan
                if self.journal.entries():
                    deadline = min(deadline, max(self._hub_wait_until, time.monotonic()))
                if self.settle.pending():
                    deadline = min(deadline, time.monotonic() + min(0.25, self.settle.seconds))
                self._wake.wait(max(0.0, deadline - time.monotonic()))
        finally:
            if observer is not None:
                observer.stop()
                observer.join(timeout=5)


def _reason_text(status: Any, detail: Any) -> str:
    return f"the hub refused it ({status}): {detail}"


def _start_observer(folders: Sequence[Path], wake: threading.Event, own: Path) -> Any:
    """A watchdog observer that wakes the loop on any change outside our own journal; None when
    the platform or share cannot deliver events (the periodic rescan covers that)."""
    try:
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer
    except ImportError:  # pragma: no cover - watchdog is a dependency
        return None

    own_text = str(own)

    class Wake(FileSystemEventHandler):
        def on_any_event(self, event: Any) -> None:
            if not str(event.src_path).startswith(own_text):
                wake.set()

    observer = Observer()
    try:
        for folder in folders:
            observer.schedule(Wake(), str(folder), recursive=True)
        observer.start()
    except OSError:
        return None
    return observer


def default_queue_dir(paths: Iterable[Path]) -> Path:
    """``<first folder>/.rdx``, or ``<first file's folder>/.rdx``."""
    paths = list(paths)
    folder = next((p for p in paths if p.is_dir()), None)
    return (folder if folder is not None else paths[0].resolve().parent) / ".rdx"


def upload_cli(
    paths: Sequence[Path],
    *,
    hub: str,
    device_key: str | None = None,
    username: str | None = None,
    password: str | None = None,
    watch: bool = False,
    queue_dir: Path | None = None,
    fields: dict[str, str | None] | None = None,
    settle_seconds: float = 1.0,
    rescan_seconds: float = 10.0,
    retry_max_seconds: float = 300.0,
    attempts: int = 4,
    timeout: float = 60.0,
) -> int:
    """``remote-dx upload-ecg``; answers the exit status (0 only if everything was delivered)."""
    report = Reporter()
    paths = [Path(p) for p in paths]
    missing = [p for p in paths if not p.exists()]
    if not paths or missing:
        report.line(f"no such file or folder: {', '.join(map(str, missing))}", style="red")
        return EXIT_USAGE
    if watch and not all(p.is_dir() for p in paths):
        report.line("--watch needs folders to watch", style="red")
        return EXIT_USAGE
    if not device_key and not (username and password):
        report.line(
            "give --device-key (RDX_UPLOAD_DEVICE_KEY) or --username and --password "
            "(RDX_UPLOAD_USERNAME / RDX_UPLOAD_PASSWORD) of a technician",
            style="red",
        )
        return EXIT_USAGE
    journal = Journal(queue_dir or default_queue_dir(paths))
    try:
        journal.open()
    except JournalBusy as exc:
        report.line(str(exc), style="red")
        return EXIT_USAGE
    client = HubClient(
        hub, device_key=device_key, username=username, password=password, timeout=timeout
    )
    uploader = Uploader(
        journal,
        client,
        fields={k: v for k, v in (fields or {}).items() if v},
        watch=watch,
        settle_seconds=settle_seconds,
        rescan_seconds=rescan_seconds,
        backoff=Backoff(base=min(1.0, retry_max_seconds), cap=retry_max_seconds),
        reporter=report,
    )
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, lambda *_: uploader.stop())
    try:
        if watch:
            with contextlib.suppress(KeyboardInterrupt):
                uploader.run_watch(paths)
            report.line(f"stopped; {len(journal.entries())} ECG(s) left queued in {journal.root}")
            return EXIT_OK
        return uploader.run_once(paths, attempts=attempts)
    except HubRefused as exc:
        report.stop_progress()
        report.line(f"STOPPED: {exc}", style="red")
        return EXIT_REFUSED
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        client.close()
        journal.close()
