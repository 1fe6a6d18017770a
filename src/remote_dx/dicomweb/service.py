"""What the DICOMweb routes call: the index look-ups and store reads behind each resource.

Kept apart from the router so the HTTP layer only maps requests and responses.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from remote_dx.core.errors import NotFound
from remote_dx.core.models import User
from remote_dx.dicomweb import access, metadata
from remote_dx.dicomweb.access import InstanceRef
from remote_dx.storage.base import ObjectStore


def metadata_blob(
    session: Session,
    store: ObjectStore,
    user: User,
    study_uid: str,
    series_uid: str | None = None,
    sop_uid: str | None = None,
) -> tuple[bytes, bool]:
    """The metadata of a study, series or instance: (body, whether it is gzip'd).

    A series' stored gzip goes out as is; a study's is the series arrays joined; an instance's is
    picked out of its series' array.
    """
    refs = access.instances(session, user, study_uid, series_uid)
    session.close()  # the store reads below need no database connection
    by_series: dict[str, list[InstanceRef]] = {}
    for ref in refs:
        by_series.setdefault(ref.series_uid, []).append(ref)
    if series_uid is not None and sop_uid is None:
        return metadata.series_metadata(store, refs), True
    items: list[dict[str, Any]] = []
    for series_refs in by_series.values():
        items.extend(metadata.decode(metadata.series_metadata(store, series_refs)))
    if sop_uid is not None:
        items = [i for i in items if i.get("00080018", {}).get("Value") == [sop_uid]]
        if not items:
            raise NotFound(f"instance {sop_uid} not found")
    return json.dumps(items, ensure_ascii=False, separators=(",", ":")).encode(), False


def gunzip(blob: bytes) -> bytes:
    return gzip.decompress(blob)


def refs_for(
    session: Session,
    user: User,
    study_uid: str,
    series_uid: str | None = None,
    sop_uid: str | None = None,
) -> Sequence[InstanceRef]:
    refs = access.instances(session, user, study_uid, series_uid, sop_uid)
    session.close()
    return refs
