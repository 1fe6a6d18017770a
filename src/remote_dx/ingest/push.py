"""The township side: send DICOM files to a hub by C-STORE (PS3.4 Annex B, SCU role).

Files are sent exactly as they are on disk (no decoding or transcoding): for every
(SOP class, transfer syntax) pair the files actually contain, one presentation context proposing
that transfer syntax is requested, and all files go over one association (more only when a folder
needs more than the 128 contexts an association may carry, PS3.8 §9.3.2.2).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID
from pynetdicom import AE, _config, evt
from pynetdicom.association import Association
from pynetdicom.presentation import build_context
from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS

from remote_dx.ingest.transport import MAX_PDU_SIZE, NODELAY_HANDLER

log = logging.getLogger(__name__)

MAX_CONTEXTS = 128  # PS3.8 §9.3.2.2: presentation context IDs are odd numbers 1..255
_MEDIA_DIRECTORY = "1.2.840.10008.1.3.10"  # DICOMDIR: a file-set index, not an instance


@dataclass(frozen=True)
class PushFile:
    path: Path
    sop_class: UID
    sop_instance: UID
    transfer_syntax: UID
    size: int

    @property
    def context_key(self) -> tuple[str, str]:
        return (str(self.sop_class), str(self.transfer_syntax))


@dataclass(frozen=True)
class PushFailure:
    path: Path
    reason: str


@dataclass
class PushResult:
    """What happened to each file; ``ok`` only if every instance was stored."""

    sent: int = 0
    warnings: int = 0
    skipped: list[Path] = field(default_factory=list)
    failed: list[PushFailure] = field(default_factory=list)
    bytes_sent: int = 0

    @property
    def ok(self) -> bool:
        return not self.failed

    def fail(self, path: Path, reason: str) -> None:
        self.failed.append(PushFailure(path, reason))


def _candidates(paths: Iterable[Path]) -> Iterator[tuple[Path, bool]]:
    """(file, named explicitly) for each path; folders are walked recursively, sorted."""
    for path in paths:
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                if child.is_file() and not child.name.startswith("."):
                    yield child, False
        else:
            yield path, True


def scan(paths: Iterable[Path], result: PushResult) -> list[PushFile]:
    """Read each file's meta information; non-DICOM files found in folders are skipped."""
    files: list[PushFile] = []
    for path, explicit in _candidates(paths):
        try:
            ds = dcmread(
                path,
                stop_before_pixels=True,
                specific_tags=["SOPClassUID", "SOPInstanceUID"],
            )
        except FileNotFoundError:
            result.fail(path, "no such file")
            continue
        except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
            if explicit:
                result.fail(path, f"not a DICOM file: {exc}")
            else:
                result.skipped.append(path)
            continue
        meta = getattr(ds, "file_meta", None)
        sop_class = meta.get("MediaStorageSOPClassUID") if meta else None
        sop_instance = meta.get("MediaStorageSOPInstanceUID") if meta else None
        transfer_syntax = meta.get("TransferSyntaxUID") if meta else None
        if sop_class == _MEDIA_DIRECTORY:
            result.skipped.append(path)
            continue
        if not (sop_class and sop_instance and transfer_syntax):
            result.fail(
                path,
                "no DICOM file meta information (PS3.10): SOP Class, SOP Instance or "
                "Transfer Syntax UID missing",
            )
            continue
        files.append(
            PushFile(
                path, UID(sop_class), UID(sop_instance), UID(transfer_syntax), path.stat().st_size
            )
        )
    return files


def _batches(files: Sequence[PushFile]) -> Iterator[list[PushFile]]:
    """Groups of files whose distinct (SOP class, transfer syntax) pairs fit one association."""
    batch: list[PushFile] = []
    keys: set[tuple[str, str]] = set()
    for item in files:
        if item.context_key not in keys and len(keys) == MAX_CONTEXTS:
            yield batch
            batch, keys = [], set()
        keys.add(item.context_key)
        batch.append(item)
    if batch:
        yield batch


def _status_text(status: int) -> str:
    description = STORAGE_SERVICE_CLASS_STATUS.get(status, ("", ""))[1]
    return f"0x{status:04X}" + (f" ({description})" if description else "")


def _rejection_text(assoc: Association) -> str:
    primitive = assoc.acceptor.primitive
    if primitive is not None and primitive.result is not None:
        return (
            f"association rejected by the receiver: {primitive.reason_str} "
            f"({primitive.result_str}, {primitive.source_str})"
        )
    return "association rejected by the receiver"


class _Progress:
    """A rich progress bar (on stderr) over instances, or nothing when ``enabled`` is off."""

    def __init__(self, enabled: bool, total: int) -> None:
        self._bar = None
        if enabled and total:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(
                TextColumn("C-STORE"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
            )
            self._task = self._bar.add_task("send", total=total)
            self._bar.start()

    def advance(self) -> None:
        if self._bar is not None:
            self._bar.advance(self._task)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def push_files(
    paths: Iterable[Path | str],
    *,
    host: str,
    port: int,
    calling_ae: str,
    called_ae: str,
    progress: bool = True,
) -> PushResult:
    """Send every DICOM file under ``paths``; never raises for a bad file or a refused peer.

    Each failed file is in ``result.failed`` with its reason (an association that cannot be made
    fails every file it was to carry, with the rejection or connection error as reason).
    """
    # Send each file's data set bytes as they are on disk (read in PDU-sized chunks) rather than
    # decoding and re-encoding it; affects only C-STOREs given a path, as here.
    _config.STORE_SEND_CHUNKED_DATASET = True
    result = PushResult()
    files = scan([Path(p) for p in paths], result)
    bar = _Progress(progress, len(files))
    try:
        for batch in _batches(files):
            _send_batch(batch, result, bar, host, port, calling_ae, called_ae)
    finally:
        bar.close()
    return result


def _send_batch(
    batch: list[PushFile],
    result: PushResult,
    bar: _Progress,
    host: str,
    port: int,
    calling_ae: str,
    called_ae: str,
) -> None:
    ae = AE(ae_title=calling_ae)
    ae.maximum_pdu_size = MAX_PDU_SIZE
    keys = sorted({item.context_key for item in batch})
    ae.requested_contexts = [build_context(sop, [ts]) for sop, ts in keys]
    connected = threading.Event()
    assoc = ae.associate(
        host,
        port,
        ae_title=called_ae,
        evt_handlers=[NODELAY_HANDLER, (evt.EVT_CONN_OPEN, lambda _event: connected.set())],
    )
    if not assoc.is_established:
        if not connected.is_set():
            reason = f"cannot connect to {host}:{port} (connection refused or host unreachable)"
        elif assoc.is_rejected:
            reason = _rejection_text(assoc)
        else:
            reason = f"association with {called_ae}@{host}:{port} aborted by the receiver"
        for item in batch:
            result.fail(item.path, reason)
            bar.advance()
        ae.shutdown()
        log.info(reason)
        return
    accepted = {
        (str(cx.abstract_syntax), str(cx.transfer_syntax[0])) for cx in assoc.accepted_contexts
    }
    try:
        for index, item in enumerate(batch):
            if not assoc.is_established:
                for rest in batch[index:]:
                    result.fail(rest.path, "association ended by the receiver before sending")
                break
            if item.context_key not in accepted:
                result.fail(
                    item.path,
                    f"receiver does not accept {item.sop_class.name} in "
                    f"{item.transfer_syntax.name}",
                )
                bar.advance()
                continue
            _send_one(assoc, item, result)
            bar.advance()
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()


def _send_one(assoc: Association, item: PushFile, result: PushResult) -> None:
    try:
        status = assoc.send_c_store(item.path)
    except (OSError, ValueError, AttributeError, RuntimeError) as exc:
        result.fail(item.path, f"could not send: {exc}")
        return
    if "Status" not in status:
        result.fail(item.path, "no response from the receiver (timeout or connection lost)")
        return
    code = int(status.Status)
    if code == 0x0000:
        result.sent += 1
        result.bytes_sent += item.size
    elif code in (0x0001, 0x0107, 0x0116) or 0xB000 <= code <= 0xBFFF:
        result.sent += 1  # warning: stored, with coercion or elements discarded
        result.warnings += 1
        result.bytes_sent += item.size
    else:
        comment = str(status.get("ErrorComment", "") or "")
        reason = f"receiver answered {_status_text(code)}"
        result.fail(item.path, f"{reason}: {comment}" if comment else reason)


def push_cli(
    paths: Iterable[Path | str],
    *,
    host: str,
    port: int,
    calling_ae: str,
    called_ae: str,
) -> int:
    """``remote-dx push``: send, print a line per failed file and a summary; 0 only if all sent."""
    from rich.console import Console

    console = Console(stderr=True, highlight=False)
    paths = list(paths)
    result = push_files(
        paths,
        host=host,
        port=port,
        calling_ae=calling_ae,
        called_ae=called_ae,
        progress=console.is_terminal,
    )
    for failure in result.failed:
        console.print(
            f"FAILED {failure.path}: {failure.reason}", style="red", markup=False, soft_wrap=True
        )
    total = result.sent + len(result.failed)
    summary = f"{result.sent} of {total} instances sent to {called_ae}@{host}:{port}"
    if result.warnings:
        summary += f" ({result.warnings} with warnings)"
    if result.skipped:
        summary += f"; {len(result.skipped)} non-DICOM files skipped"
    if total == 0:
        console.print(
            f"no DICOM files found in {', '.join(map(str, paths))}",
            style="red",
            markup=False,
            soft_wrap=True,
        )
        return 2
    console.print(summary, style="green" if result.ok else "red", markup=False, soft_wrap=True)
    return 0 if result.ok else 1
