"""Building DICOM JSON (PS3.18 Annex F) attribute values from index columns."""

from __future__ import annotations

from typing import Any

JsonDataset = dict[str, dict[str, Any]]

_NUMERIC_VRS = frozenset({"IS", "US", "UL", "SS", "SL", "DS", "FL", "FD", "SV", "UV"})


def person_name(value: str) -> dict[str, str]:
    """A PN value (``Alphabetic=Ideographic=Phonetic``, PS3.5 §6.2.1) as its JSON object (F.2.2)."""
    groups = value.split("=")
    out: dict[str, str] = {}
    for name, group in zip(("Alphabetic", "Ideographic", "Phonetic"), groups, strict=False):
        if group:
            out[name] = group
    return out


def attribute(vr: str, value: Any) -> dict[str, Any]:
    """One attribute's JSON object; None or "" gives the attribute with no Value (F.2.5)."""
    if value is None or value == "" or value == []:
        return {"vr": vr}
    values = value if isinstance(value, list) else [value]
    if vr == "PN":
        return {"vr": vr, "Value": [person_name(str(v)) for v in values]}
    if vr in _NUMERIC_VRS:
        return {"vr": vr, "Value": [int(v) if vr != "DS" else float(v) for v in values]}
    return {"vr": vr, "Value": [str(v) for v in values]}


def tag_key(tag: int) -> str:
    return f"{tag:08X}"
