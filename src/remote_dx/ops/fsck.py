"""``remote-dx fsck``: the object store against the index, in both directions.

:func:`~remote_dx.ingest.instance.file_instance` writes the object, then commits its
``instances`` row; the C-STORE (or STOW / upload) is answered only once both are durable. With
the embedded file store the two device flushes run side by side, so a crash *before* the answer
can leave a row whose object is short or missing — the sender got no answer and re-sends, and
the re-send checks the object against the row and stores it again. So in a healthy hub every
row has its object and every ``dicom/`` object has its row. What breaks that:

- **object without a row** (*orphan object*): the process died between the object write and the
  commit, or the database was restored from a dump older than the object store. The object is
  what the modality sent; ``--repair`` files it again through ``file_instance`` (the one door,
  so study, series and counters are right and the study is processed again), or, when it is not
  a readable DICOM instance, moves it under ``quarantine/`` for a person to look at.
- **row without an object** (*missing object*): storage lost it, or the hub died before
  answering and the sender never re-sent. Nothing here can bring the
  bytes back; ``--repair`` sets ``instances.missing_at`` so it shows, and the fix is to restore the
  object from a backup or have the modality send it again (fsck clears the mark when it finds
  the object whole again).
- **size or checksum mismatch**: the object's bytes are not those received (SHA-256 and size
  kept in the row at receipt). ``--repair`` copies the bad bytes under ``quarantine/`` and marks
  the row missing, as above.

Only ``dicom/`` keys are instances; previews (``previews/``) and decoded renditions
(``renditions/``) are rebuilt by processing or on request, and ECG originals are kept beside
their instances, so these are listed in the counts but not judged.
Works on every :class:`~remote_dx.storage.base.ObjectStore` (FileStore, S3Store).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from pydicom.tag import Tag
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from remote_dx.core.clock import utcnow
from remote_dx.core.errors import InvalidInstance
from remote_dx.core.models import Device, Instance, Institution, Study
from remote_dx.ingest.instance import Sender, file_instance
from remote_dx.ingest.part10 import file_meta_value
from remote_dx.storage.base import ObjectNotFound, ObjectStore

log = logging.getLogger(__name__)

INSTANCE_PREFIX = "dicom/"
QUARANTINE_PREFIX = "quarantine/"
SOURCE_AE_TITLE = int(Tag(0x0002, 0x0016))  # PS3.10 §7.1 Source Application Entity Title

ORPHAN_OBJECT = "orphan_object"
MISSING_OBJECT = "missing_object"
SIZE_MISMATCH = "size_mismatch"
CHECKSUM_MISMATCH = "checksum_mismatch"


@dataclass
class Finding:
    kind: str
    key: str
    detail: str = ""
    repair: str | None = None  # what --repair did, None when not repaired

    def line(self) -> str:
        done = f" -> {self.repair}" if self.repair else ""
        return f"{self.kind:18} {self.key}{': ' + self.detail if self.detail else ''}{done}"


@dataclass
class FsckReport:
    objects: int = 0  # instance objects listed
    other_objects: int = 0  # previews, ECG originals, quarantine
    rows: int = 0
    verified: int = 0  # rows whose bytes were read and hashed
    findings: list[Finding] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.findings

    @property
    def unrepaired(self) -> list[Finding]:
        return [f for f in self.findings if f.repair is None]

    def count(self, kind: str) -> int:
        return sum(1 for f in self.findings if f.kind == kind)

    def summary(self) -> str:
        kinds = (ORPHAN_OBJECT, MISSING_OBJECT, SIZE_MISMATCH, CHECKSUM_MISMATCH)
        found = ", ".join(f"{self.count(k)} {k}" for k in kinds)
        return (
            f"{self.rows} instance rows, {self.objects} instance objects "
            f"({self.other_objects} other objects), {self.verified} checksums verified; {found}"
        )


def fsck(
    store: ObjectStore,
    sessions: sessionmaker[Session],
    *,
    repair: bool = False,
    checksums: bool = True,
    progress: Callable[[Finding], None] | None = None,
) -> FsckReport:
    """Compare the store with the index; with ``repair``, fix what can be fixed (see module)."""
    report = FsckReport()
    keys: set[str] = set()
    for key in store.list():
        if key.startswith(INSTANCE_PREFIX):
            keys.add(key)
        else:
            report.other_objects += 1
    report.objects = len(keys)

    def found(finding: Finding) -> None:
        report.findings.append(finding)
        if progress is not None:
            progress(finding)

    indexed: set[str] = set()
    for row in _rows(sessions):
        report.rows += 1
        indexed.add(row.object_key)
        if row.object_key not in keys:
            finding = Finding(MISSING_OBJECT, row.object_key, f"SOP {row.sop_instance_uid}")
            if repair:
                _mark_missing(sessions, row.id, True)
                finding.repair = "marked missing"
            found(finding)
            continue
        problem = None
        if checksums:
            try:
                data = store.get(row.object_key)
            except ObjectNotFound:
                data = None
            report.verified += 1
            if data is None:
                problem = Finding(MISSING_OBJECT, row.object_key, "listed but not readable")
            elif len(data) != row.size_bytes:
                problem = Finding(
                    SIZE_MISMATCH, row.object_key, f"{len(data)} bytes, {row.size_bytes} indexed"
                )
            elif hashlib.sha256(data).hexdigest() != row.sha256:
                problem = Finding(CHECKSUM_MISMATCH, row.object_key, "SHA-256 differs from receipt")
            if problem is not None and repair:
                if data is not None:
                    store.put(QUARANTINE_PREFIX + row.object_key, data)
                _mark_missing(sessions, row.id, True)
                problem.repair = "quarantined, marked missing" if data else "marked missing"
        if problem is not None:
            found(problem)
        elif row.missing_at is not None and repair:
            _mark_missing(sessions, row.id, False)  # back (restored or re-sent): clear the mark

    for key in sorted(keys - indexed):
        finding = Finding(ORPHAN_OBJECT, key)
        if repair:
            finding.repair = _refile(store, sessions, key)
        found(finding)
    return report


@dataclass(frozen=True)
class _Row:
    id: int
    sop_instance_uid: str
    object_key: str
    size_bytes: int
    sha256: str
    missing_at: object


def _rows(sessions: sessionmaker[Session], batch: int = 5000) -> Iterator[_Row]:
    """Every instance row, in id order, a batch per short transaction (no long-held snapshot)."""
    last = 0
    while True:
        with sessions() as session:
            rows = session.execute(
                select(
                    Instance.id,
                    Instance.sop_instance_uid,
                    Instance.object_key,
                    Instance.size_bytes,
                    Instance.sha256,
                    Instance.missing_at,
                )
                .where(Instance.id > last)
                .order_by(Instance.id)
                .limit(batch)
            ).all()
        if not rows:
            return
        for row in rows:
            yield _Row(*row)
        last = rows[-1][0]


def _mark_missing(sessions: sessionmaker[Session], row_id: int, missing: bool) -> None:
    with sessions() as session, session.begin():
        session.execute(
            update(Instance)
            .where(Instance.id == row_id)
            .values(missing_at=utcnow() if missing else None)
        )


def _refile(store: ObjectStore, sessions: sessionmaker[Session], key: str) -> str:
    """File an orphan object through ``file_instance``, or quarantine it; say what was done."""
    try:
        data = store.get(key)
    except ObjectNotFound:
        return "gone before repair"
    try:
        sender = _sender_for(sessions, data, key)
        filed = file_instance(data, store=store, sessions=sessions, sender=sender)
    except InvalidInstance as exc:
        store.put(QUARANTINE_PREFIX + key, data)
        store.delete(key)
        return f"quarantined (unreadable: {str(exc)[:120]})"
    if filed.object_key != key:
        # Filed under its proper key; this copy sat under a wrong name.
        store.put(QUARANTINE_PREFIX + key, data)
        store.delete(key)
        return f"re-indexed as {filed.object_key}; stray copy quarantined"
    return "re-indexed" if not filed.duplicate else "already indexed"


def _sender_for(sessions: sessionmaker[Session], data: bytes, key: str) -> Sender:
    """Who sent an orphan: the study's origin if the study is indexed, else the device named by
    the file's Source AE Title (the receiver writes it), else the root institution of the
    network (the hub), so the instance is never left out for want of an origin."""
    parts = key.split("/")
    study_uid = parts[1] if len(parts) > 1 else ""
    with sessions() as session:
        study = session.scalar(select(Study).where(Study.study_uid == study_uid))
        if study is not None:
            institution = session.get(Institution, study.origin_id)
            device = session.get(Device, study.device_id) if study.device_id else None
            if institution is not None:
                return Sender(
                    study.device_id,
                    institution.id,
                    institution.code,
                    device.ae_title if device else "FSCK",
                )
        try:
            source = (file_meta_value(data, SOURCE_AE_TITLE) or "").strip()
        except Exception:
            source = ""
        if source:
            device = session.scalar(select(Device).where(Device.ae_title == source))
            if device is not None:
                return Sender.of(device)
        root = session.scalar(
            select(Institution).where(Institution.parent_id.is_(None)).order_by(Institution.id)
        )
        if root is None:
            raise InvalidInstance("no institution to file it under (network not loaded)")
        return Sender(None, root.id, root.code, source[:16] or "FSCK")
