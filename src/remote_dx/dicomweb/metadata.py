"""WADO-RS metadata (PS3.18 §10.4.1.1.2, DICOM JSON of Annex F), precomputed per series.

When a study is processed, :func:`precompute_study` turns the headers the pipeline has already
read into one gzip'd DICOM JSON array per series and stores it in the object store under
:func:`metadata_key`, whose name carries the series' instance count: an instance that arrives
later changes the count, so a stale array is never served, and a missing one is computed on
demand (:func:`series_metadata`) from the stored objects and kept for the next request.

Bulk values (Pixel Data, Waveform Data, any binary value over 1 KiB) are not inlined: they carry a
``BulkDataURI`` (F.2.6) to this service's ``…/instances/{sop}/bulkdata/{path}`` resource; the path
is the element's tag path (``7FE00010``, ``54000100/0/54001010`` for a waveform's data), written as
an absolute path (``/dicom-web/…``) so the precomputed arrays do not depend on the host name.
Text is decoded with :func:`remote_dx.core.charset.decode_element` (pydicom mis-decodes ISO 2022
IR 58), and the JSON is UTF-8 with Specific Character Set ``ISO_IR 192``.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
from collections.abc import Iterable, Sequence
from typing import Any

import pydicom
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from remote_dx.core.charset import decode_element
from remote_dx.dicomweb.access import InstanceRef
from remote_dx.dicomweb.cache import cached_get
from remote_dx.dicomweb.dicomjson import person_name
from remote_dx.storage.base import ObjectNotFound, ObjectStore

log = logging.getLogger(__name__)

PREFIX = "/dicom-web"
BULK_THRESHOLD = 1024
_TEXT_VRS = frozenset({"PN", "LO", "SH", "ST", "LT", "UT", "UC"})
_PIXEL_DATA = 0x7FE00010


def metadata_key(study_uid: str, series_uid: str, instances: int) -> str:
    return f"dicomweb/metadata/{study_uid}/{series_uid}.{instances}.json.gz"


def instance_path(study_uid: str, series_uid: str, sop_uid: str) -> str:
    return f"{PREFIX}/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}"


def _bulk_paths(ds: Dataset, prefix: str = "") -> dict[int, str]:
    """``id(element) → tag path`` for every binary element, sequences included."""
    paths: dict[int, str] = {}
    for tag in list(ds.keys()):
        try:
            element = ds[tag]
        except (ValueError, TypeError, KeyError, OverflowError):
            continue  # a malformed value: to_json_dict leaves it out as well
        path = f"{prefix}{int(tag):08X}"
        if element.VR == "SQ":
            for index, item in enumerate(element.value):
                paths.update(_bulk_paths(item, f"{path}/{index}/"))
        else:
            paths[id(element)] = path
    return paths


def instance_json(ds: Dataset, study_uid: str, series_uid: str) -> dict[str, Any]:
    """One instance's DICOM JSON (F.2), bulk values as BulkDataURIs."""
    sop_uid = str(ds.SOPInstanceUID)
    base = instance_path(study_uid, series_uid, sop_uid) + "/bulkdata/"
    paths = _bulk_paths(ds)

    def bulk_uri(element: DataElement) -> str:
        return base + paths.get(id(element), f"{int(element.tag):08X}")

    # A malformed value (stored as received, PS3.5 §7.1) is left out rather than failing all.
    out = ds.to_json_dict(
        bulk_data_threshold=BULK_THRESHOLD,
        bulk_data_element_handler=bulk_uri,
        suppress_invalid_tags=True,
    )
    out.pop(f"{_PIXEL_DATA:08X}", None)
    if "Rows" in ds and ("PixelData" in ds or ("PixelData" not in ds and "BitsAllocated" in ds)):
        # Read with stop_before_pixels: the header says there are pixels (PS3.3 C.7.6.3).
        encapsulated = (
            ds.file_meta.get("TransferSyntaxUID") is not None
            and pydicom.uid.UID(ds.file_meta.TransferSyntaxUID).is_encapsulated
        )
        vr = "OB" if encapsulated or int(ds.get("BitsAllocated", 16) or 16) <= 8 else "OW"
        out[f"{_PIXEL_DATA:08X}"] = {"vr": vr, "BulkDataURI": base + f"{_PIXEL_DATA:08X}"}
    _fix_text(ds, out)
    out["00080005"] = {"vr": "CS", "Value": ["ISO_IR 192"]}
    file_meta = getattr(ds, "file_meta", None)
    transfer_syntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    if transfer_syntax:
        # Available Transfer Syntax UID: what the frames come in when asked for "*" (PS3.18).
        out["00083002"] = {"vr": "UI", "Value": [str(transfer_syntax)]}
    return dict(sorted(out.items()))


def _fix_text(ds: Dataset, out: dict[str, Any]) -> None:
    """Top-level text in the instance's own character set, decoded by our decoder."""
    charset = ds.get("SpecificCharacterSet")
    if not charset or "2022" not in str(charset):
        return
    for element in ds:
        if element.VR in _TEXT_VRS and element.keyword:
            text = decode_element(ds, element.keyword)
            key = f"{int(element.tag):08X}"
            if text is None or key not in out:
                continue
            values = text.split("\\")
            if element.VR == "PN":
                out[key]["Value"] = [person_name(v) for v in values]
            else:
                out[key]["Value"] = values


def encode(instances: Iterable[dict[str, Any]]) -> bytes:
    """The gzip'd JSON array (compresslevel 6: ~10× smaller, a few ms for a CT series)."""
    text = json.dumps(list(instances), ensure_ascii=False, separators=(",", ":"))
    return gzip.compress(text.encode("utf-8"), compresslevel=6, mtime=0)


def _number(ds: Dataset) -> tuple[int, str]:
    try:
        return int(ds.get("InstanceNumber") or 0), str(ds.SOPInstanceUID)
    except (TypeError, ValueError):
        return 0, str(ds.SOPInstanceUID)


def precompute_study(store: ObjectStore, study_uid: str, headers: Sequence[Dataset]) -> None:
    """Store every series' metadata from headers already read (the pipeline's hook).

    Never raises: metadata can always be computed on demand, so a failure here must not fail
    the study's processing.
    """
    try:
        by_series: dict[str, list[Dataset]] = {}
        for ds in headers:
            by_series.setdefault(str(ds.SeriesInstanceUID), []).append(ds)
        for series_uid, datasets in by_series.items():
            datasets.sort(key=_number)
            blob = encode(instance_json(ds, study_uid, series_uid) for ds in datasets)
            store.put(
                metadata_key(study_uid, series_uid, len(datasets)),
                blob,
                content_type="application/gzip",
            )
    except Exception:
        log.warning("metadata of study %s not precomputed", study_uid, exc_info=True)


def series_metadata(store: ObjectStore, refs: Sequence[InstanceRef]) -> bytes:
    """The series' gzip'd DICOM JSON array: the stored one, else computed now and stored.

    ``refs`` are the series' visible instances from the index (all of one series).
    """
    first = refs[0]
    key = metadata_key(first.study_uid, first.series_uid, len(refs))
    try:
        # The key names the instance count, so the cached bytes are those of this series' state.
        return cached_get(store, key)
    except ObjectNotFound:
        pass
    datasets = [
        pydicom.dcmread(io.BytesIO(store.get(ref.object_key)), stop_before_pixels=True)
        for ref in refs
    ]
    blob = encode(instance_json(ds, first.study_uid, first.series_uid) for ds in datasets)
    store.put(key, blob, content_type="application/gzip")
    return blob


def decode(blob: bytes) -> list[dict[str, Any]]:
    return json.loads(gzip.decompress(blob))
