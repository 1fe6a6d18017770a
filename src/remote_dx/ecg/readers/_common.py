"""Helpers every ECG reader shares: lead labels, unit scaling, safe XML, the final checks."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import datetime

import numpy as np
from numpy.typing import NDArray

from remote_dx.ecg.model import ECG, STANDARD_LEADS, ECGError, standard_lead_name

# Amplitude below which a whole lead counts as flat (no signal): 5 µV peak to peak is far below
# any real ECG (even a lead-off trace carries noise of tens of µV once amplified).
FLAT_PTP_MV = 0.005

# Millivolts per one of each unit spelling carts and standards use.
_UNIT_TO_MV = {
    "uv": 1e-3,
    "µv": 1e-3,
    "μv": 1e-3,
    "microvolt": 1e-3,
    "microvolts": 1e-3,
    "mv": 1.0,
    "millivolt": 1.0,
    "millivolts": 1.0,
    "v": 1000.0,
    "volt": 1000.0,
    "volts": 1000.0,
    "nv": 1e-6,
}

_MDC_LEAD = re.compile(r"^MDC_ECG_LEAD_(.+)$", re.IGNORECASE)
_PAREN = re.compile(r"\s*\(.*\)\s*$")


def unit_scale_to_mv(unit: str | None, *, what: str) -> float:
    """Millivolts per one ``unit``; ECGError naming ``what`` when the unit is not a voltage."""
    if unit is None or not unit.strip():
        raise ECGError(f"{what}: amplitude unit missing")
    key = unit.strip().lower()
    if key not in _UNIT_TO_MV:
        raise ECGError(f"{what}: amplitude unit {unit!r} is not a voltage (uV, mV or V)")
    return _UNIT_TO_MV[key]


def lead_name(label: str) -> str:
    """Standard lead name for a label in any of the spellings carts use.

    Handles DICOM code meanings ("Lead I (Einthoven)", "Lead aVR"), MDC codes
    ("MDC_ECG_LEAD_AVR"), MUSE/CSV labels ("AVR", "v1", "II") and WFDB names ("MLII").
    """
    text = _PAREN.sub("", label.strip())
    match = _MDC_LEAD.match(text)
    if match:
        text = match.group(1)
    return standard_lead_name(text)


def as_mv(values: NDArray, scale_mv: float, offset: float = 0.0) -> NDArray[np.float32]:
    """Raw samples → float32 millivolts: (value − offset) × scale."""
    return ((np.asarray(values, dtype=np.float64) - offset) * scale_mv).astype(np.float32)


def finish(ecg: ECG, *, derive_limb_leads: bool = True) -> ECG:
    """The checks and completion every reader's result goes through.

    Limb leads III/aVR/aVL/aVF are derived from I and II when the source stored only some of them
    (8-lead carts); the model's validation then runs; and a recording whose every lead is flat is
    refused. A single flat or noisy lead is *not* refused: that is signal quality, which the
    analysis reports per lead ("re-acquire").
    """
    if derive_limb_leads and "I" in ecg.leads and "II" in ecg.leads:
        ecg.complete_limb_leads()
    ecg.ordered()
    ecg.validate()
    if all(float(np.ptp(v)) < FLAT_PTP_MV for v in ecg.leads.values()):
        raise ECGError(
            "all leads are flat (no signal in any lead: electrodes off or an empty recording)"
        )
    return ecg


def require_limb_pair(leads: dict[str, NDArray], *, what: str) -> None:
    """8-lead formats must carry I and II, else the other four limb leads cannot be derived."""
    missing = [n for n in ("I", "II") if n not in leads]
    if missing:
        raise ECGError(
            f"{what}: lead(s) {', '.join(missing)} missing, so III, aVR, aVL and aVF cannot be "
            "derived"
        )


def sort_key(name: str) -> int:
    return STANDARD_LEADS.index(name) if name in STANDARD_LEADS else len(STANDARD_LEADS)


def parse_xml(data: bytes, *, what: str) -> ET.Element:
    """Parse untrusted XML with the standard library, refusing entity declarations.

    Entity expansion ("billion laughs", external entities) needs an ``<!ENTITY`` declaration;
    a bare ``<!DOCTYPE RestingECG SYSTEM "restecg.dtd">`` (GE MUSE writes one) is harmless because
    expat never fetches external DTDs, so only declarations are refused.
    """
    head = data[:4096].lower()
    if b"<!entity" in data.lower() or (b"<!doctype" in head and b"[" in _doctype(head)):
        raise ECGError(f"{what}: XML with a DTD internal subset or entity declarations is refused")
    try:
        return ET.fromstring(data)
    except ET.ParseError as exc:
        raise ECGError(f"{what}: not well-formed XML ({exc})") from exc


def _doctype(head: bytes) -> bytes:
    start = head.find(b"<!doctype")
    end = head.find(b">", start)
    return head[start : end if end >= 0 else len(head)]


def local(tag: str) -> str:
    """Tag without its ``{namespace}``."""
    return tag.rsplit("}", 1)[-1]


def parse_number(text: str | None, *, what: str) -> float:
    try:
        return float((text or "").strip())
    except ValueError:
        raise ECGError(f"{what}: {text!r} is not a number") from None


def optional_number(text: str | None) -> float | None:
    try:
        value = float((text or "").strip())
    except ValueError:
        return None
    return value if np.isfinite(value) else None


def parse_compact_datetime(text: str | None) -> datetime | None:
    """YYYYMMDD[HHMM[SS[.ffff]]] (DICOM DT / HL7 TS) without time zone → naive datetime."""
    if not text:
        return None
    text = text.strip()
    digits = re.match(r"^(\d{8})(\d{2})?(\d{2})?(\d{2})?(\.\d+)?", text)
    if not digits:
        return None
    date, hh, mm, ss, frac = digits.groups()
    try:
        value = datetime.strptime(date, "%Y%m%d")
        value = value.replace(hour=int(hh or 0), minute=int(mm or 0), second=int(ss or 0))
        if frac:
            value = value.replace(microsecond=round(float(frac) * 1e6) % 1_000_000)
    except ValueError:
        return None
    return value
