"""STOW-RS (PS3.18 §10.5): store instances sent as ``multipart/related; type="application/dicom"``.

Each part goes through the one filing door, :func:`remote_dx.ingest.instance.file_instance`, with
the rules and failure statuses of the DICOM receiver (PS3.4 B.2.3):

- 0xC000 "Cannot understand": a corrupt, truncated or UID-less instance;
- 0xA700 "Out of resources": the object store or the database is down (retry later); when every
  instance failed that way the whole answer is 503 with Retry-After, as the rest of the API;
- 0x0110 "Processing failure": anything unforeseen;
- 0xA900 "Data set does not match": the instance is not of the study named in the path
  (``POST /studies/{study}``);
- 0x0124 "Not authorized" (PS3.7 C.5): the instance belongs to a study the user may not see, or the
  user's role may not create studies (only technicians and administrators do; readers may add
  objects — e.g. a measurement SR — to studies they can see).

The sender is the user's institution with no device (as for an ECG uploaded over HTTP, see
:class:`remote_dx.ingest.instance.Sender`): a new study's origin is that institution, so the
technician who stored it sees it. Re-sending the same SOP Instance UID succeeds and changes
nothing. Answer (§10.5.3): 200 all stored, 202 some failed, 409 none stored; the body is a DICOM
JSON dataset with Referenced SOP Sequence, Failed SOP Sequence (with Failure Reason) and Retrieve
URL.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pydicom
from pydicom.uid import UID
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from remote_dx.core.errors import DatabaseUnavailable, InvalidInstance, StorageUnavailable
from remote_dx.core.models import Institution, Role, Study, User
from remote_dx.dicomweb.access import visible_study
from remote_dx.dicomweb.multipart import Part, SpooledPart, UnsupportedMediaType
from remote_dx.ingest.instance import Sender, file_instance
from remote_dx.storage.base import ObjectStore

log = logging.getLogger(__name__)

OUT_OF_RESOURCES = 0xA700
DOES_NOT_MATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0x0110
NOT_AUTHORIZED = 0x0124
CREATORS = frozenset({Role.TECHNICIAN, Role.ADMIN})


@dataclass
class StowResult:
    status_code: int
    body: dict[str, Any]
    # SOP class, SOP instance, study, series UIDs
    stored: list[tuple[str, str, str, str]] = field(default_factory=list)
    failed: list[tuple[str, str, int, str]] = field(default_factory=list)


def _uids(data: bytes) -> tuple[str, str, str]:
    """(SOP Class, SOP Instance, Study Instance) UIDs as far as they can be read ('' if not)."""
    try:
        ds = pydicom.dcmread(
            io.BytesIO(data),
            stop_before_pixels=True,
            specific_tags=["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID"],
        )
        return (
            str(ds.get("SOPClassUID", "") or ""),
            str(ds.get("SOPInstanceUID", "") or ""),
            str(ds.get("StudyInstanceUID", "") or ""),
        )
    except Exception:
        # Only the answer's description of the part: a stream pydicom cannot read in any way
        # (a corrupt deflated data set raised zlib.error, found by bench/fuzz.py through
        # STOW-RS) is described without UIDs, and filing it says why it is refused.
        return "", "", ""


def check_parts(parts: Sequence[Part | SpooledPart]) -> None:
    for part in parts:
        media = part.content_type
        if media.type != "application/dicom":
            raise UnsupportedMediaType(
                f"STOW-RS parts must be application/dicom (PS3.10 files), not {media.type}"
            )


def store_instances(
    parts: Sequence[Part | SpooledPart],
    *,
    user: User,
    sessions: sessionmaker[Session],
    store: ObjectStore,
    base: str,
    study_uid: str | None = None,
) -> StowResult:
    """File every part; the PS3.18 §10.5.3 answer (status code and DICOM JSON body)."""
    result = StowResult(200, {})
    role = Role(user.role)
    with sessions() as session:
        institution = session.get(Institution, user.institution_id)
        assert institution is not None
        sender = Sender(None, institution.id, institution.code, "")
    unavailable = 0
    for part in parts:
        data = part.read()  # one part in memory at a time (a spooled body stays on disk)
        sop_class, sop_uid, part_study = _uids(data)
        reason, comment = 0, ""
        if study_uid is not None and part_study and part_study != study_uid:
            reason, comment = DOES_NOT_MATCH, f"instance of study {part_study}, not {study_uid}"
        elif part_study and UID(part_study).is_valid:
            # An invalid UID (a NUL in it, say, which PostgreSQL cannot even compare) names no
            # study: filing refuses the part below, and the parts after it are still filed.
            with sessions() as session:
                exists = session.scalar(select(Study.id).where(Study.study_uid == part_study))
                if exists is not None and visible_study(session, user, part_study) is None:
                    reason, comment = NOT_AUTHORIZED, "the study belongs to another institution"
                elif exists is None and role not in CREATORS:
                    reason, comment = NOT_AUTHORIZED, f"a {role.value} may not create studies"
        if not reason:
            try:
                filed = file_instance(data, store=store, sessions=sessions, sender=sender)
                result.stored.append(
                    (sop_class, filed.sop_instance_uid, filed.study_uid, filed.series_uid)
                )
                continue
            except InvalidInstance as exc:
                reason, comment = CANNOT_UNDERSTAND, f"invalid instance: {exc}"
            except (StorageUnavailable, DatabaseUnavailable, SQLAlchemyError) as exc:
                unavailable += 1
                reason, comment = OUT_OF_RESOURCES, f"{type(exc).__name__}: retry later"
                log.error("STOW-RS %s: %s", sop_uid, exc)
            except Exception as exc:
                log.exception("STOW-RS %s: unexpected failure", sop_uid)
                reason, comment = PROCESSING_FAILURE, f"internal error: {type(exc).__name__}"
        log.warning(
            "STOW-RS %s by %s refused (0x%04X): %s", sop_uid, user.username, reason, comment
        )
        result.failed.append((sop_class, sop_uid, reason, comment))
    if result.failed and unavailable == len(parts):
        result.status_code = 503
    elif result.failed:
        result.status_code = 202 if result.stored else 409
    result.body = _response(result, base, study_uid)
    return result


def _response(result: StowResult, base: str, study_uid: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {}
    studies = {study for _, _, study, _ in result.stored}
    if study_uid is not None or len(studies) == 1:
        body["00081190"] = {"vr": "UR", "Value": [f"{base}/studies/{study_uid or studies.pop()}"]}
    if result.failed:
        body["00081198"] = {
            "vr": "SQ",
            "Value": [
                {
                    "00081150": {"vr": "UI", "Value": [sop_class]} if sop_class else {"vr": "UI"},
                    "00081155": {"vr": "UI", "Value": [sop_uid]} if sop_uid else {"vr": "UI"},
                    "00081197": {"vr": "US", "Value": [reason]},
                }
                for sop_class, sop_uid, reason, _ in result.failed
            ],
        }
    if result.stored:
        body["00081199"] = {
            "vr": "SQ",
            "Value": [
                {
                    "00081150": {"vr": "UI", "Value": [sop_class]},
                    "00081155": {"vr": "UI", "Value": [sop_uid]},
                    "00081190": {
                        "vr": "UR",
                        "Value": [f"{base}/studies/{study}/series/{series}/instances/{sop_uid}"],
                    },
                }
                for sop_class, sop_uid, study, series in result.stored
            ],
        }
    return body
