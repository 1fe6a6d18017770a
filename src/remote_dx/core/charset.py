"""Decoding DICOM text in the study's Specific Character Set (PS3.3 C.12.1.1.2, PS3.5 §6.1).

Chinese modalities send GB18030, ISO_IR 192 (UTF-8) or GB2312 through ISO 2022 code extensions
(``\\ISO 2022 IR 58``). pydicom 3.0 leaves the ``ESC $ ) A`` designation in the decoded text for the
last one, so that case is decoded here: escape sequences only switch the G0/G1 sets, and GB2312 in
G1 is exactly EUC-CN, which the GB18030 codec (its superset, ASCII-compatible) decodes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import pydicom.charset
import pydicom.datadict
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

# ESC sequences of PS3.3 Table C.12-3/-4 (ISO 2022): designations of G0/G1 sets.
_ESCAPE = re.compile(rb"\x1b(?:\$\)A|\$\)C|\$B|\$\(D|\(B|\(J|-A|\)I|\$\)D)")
_GB_TERMS = {"ISO 2022 IR 58", "GB18030", "GBK"}


def charsets_of(ds: Dataset) -> list[str]:
    """The dataset's Specific Character Set as a list (empty → default repertoire)."""
    value = ds.get("SpecificCharacterSet")
    if value is None:
        return []
    values = list(value) if isinstance(value, (MultiValue, list, tuple)) else [value]
    return [str(v).strip() for v in values]


def decode_bytes(raw: bytes, charsets: Sequence[str]) -> str:
    """Decode one text value's raw bytes in the given character sets."""
    terms = {c.strip().upper() for c in charsets if c}
    if terms & _GB_TERMS:
        return _ESCAPE.sub(b"", raw).decode("gb18030", errors="replace").strip(" \x00")
    if "ISO_IR 192" in terms:
        return raw.decode("utf-8", errors="replace").strip(" \x00")
    encodings = pydicom.charset.convert_encodings(list(charsets) or ["ISO_IR 6"])
    return pydicom.charset.decode_bytes(raw, encodings, set()).strip(" \x00")


def decode_element(ds: Dataset, keyword: str) -> str | None:
    """The decoded text of ``keyword`` (person names keep DICOM's ``^`` and ``=``), or None.

    The raw bytes are decoded here rather than through pydicom so the ISO 2022 case is right.
    Once pydicom has converted a person name (anything read ``ds.PatientName``) its own decoding
    is cached in the dataset, so the name's original bytes are taken from the PersonName.
    """
    tag = pydicom.datadict.tag_for_keyword(keyword)
    if tag is None or tag not in ds:
        return None
    item = ds.get_item(tag)
    raw = getattr(item, "value", None)
    if isinstance(raw, bytes):
        text = decode_bytes(raw, charsets_of(ds))
    else:
        value = ds[tag].value
        original = getattr(value, "original_string", None)
        if isinstance(original, bytes):
            text = decode_bytes(original, charsets_of(ds))
        elif isinstance(value, (MultiValue, list, tuple)):
            text = "\\".join(str(v) for v in value)
        else:
            text = "" if value is None else str(value)
    if getattr(item, "VR", None) == "PN" or pydicom.datadict.dictionary_VR(tag) == "PN":
        text = text.rstrip("=^ ")
    text = text.strip(" \x00")
    return text or None


def storable(text: str) -> str:
    """``text`` as every database of the hub can hold it: U+0000 (a NUL a modality padded a
    value with, a ``%00`` in a request path) as U+FFFD, since PostgreSQL text cannot hold it.
    The index and the audit trail store the same on SQLite, which could."""
    return text.replace("\x00", "\ufffd")
