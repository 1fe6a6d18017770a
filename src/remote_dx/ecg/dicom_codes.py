"""Codes the DICOM ECG objects use (PS3.16), shared by the waveform reader and writer.

Leads: CID 3001 "ECG Leads", coding scheme SCPECG (the SCP-ECG lead table, code ``5.6.3-9-N``);
newer editions give the same leads as MDC ``2:N`` (ISO/IEEE 11073 MDC_ECG_LEAD_*, N identical).
Measurements: the SCPECG codes the carts themselves write into the Waveform Annotation module
(checked against pydicom's bundled ``waveform_ecg.dcm`` from a Mortara ELI 250).
"""

from __future__ import annotations

import re

# SCP-ECG lead number → standard lead name (PS3.16 CID 3001).
LEAD_NUMBERS: dict[int, str] = {
    1: "I",
    2: "II",
    3: "V1",
    4: "V2",
    5: "V3",
    6: "V4",
    7: "V5",
    8: "V6",
    9: "V7",
    11: "V3R",
    12: "V4R",
    61: "III",
    62: "aVR",
    63: "aVL",
    64: "aVF",
    65: "-aVR",
    66: "V8",
    67: "V9",
}
LEAD_CODES: dict[str, int] = {name: number for number, name in LEAD_NUMBERS.items()}

# Code meanings as PS3.16 CID 3001 words them.
LEAD_MEANINGS: dict[str, str] = {
    name: ("Lead I (Einthoven)" if name == "I" else f"Lead {name}") for name in LEAD_CODES
}

SCPECG = "SCPECG"
SCPECG_VERSION = "1.3"
LOCAL_LEAD_SCHEME = "99RDX"  # private scheme (PS3.16 §8.2: "99" prefix) for unlisted leads

_LEAD_CODE = re.compile(r"^(?:5\.6\.3-9-|2:)(\d+)$")


def lead_from_code(code_value: str | None) -> str | None:
    """Standard lead name for a SCPECG ``5.6.3-9-N`` or MDC ``2:N`` code value, else None."""
    match = _LEAD_CODE.match((code_value or "").strip())
    return LEAD_NUMBERS.get(int(match.group(1))) if match else None


# Measurement code (SCPECG) → DeviceMeasurements attribute.
MEASUREMENT_CODES: dict[str, str] = {
    "5.10.2.1-3": "rr_ms",
    "5.13.5-7": "pr_ms",
    "5.13.5-9": "qrs_ms",
    "5.13.5-11": "qt_ms",
    "5.10.2.5-5": "qtc_ms",
    "5.10.3-13": "axis_deg",
    "5.10.2.5-1": "heart_rate",
}
MEASUREMENT_MEANINGS: dict[str, tuple[str, str, str]] = {
    # attribute → (code value, code meaning, UCUM unit)
    "heart_rate": ("5.10.2.5-1", "Ventricular Heart Rate", "/min"),
    "pr_ms": ("5.13.5-7", "PR Interval", "ms"),
    "qrs_ms": ("5.13.5-9", "QRS Duration", "ms"),
    "qt_ms": ("5.13.5-11", "QT Interval", "ms"),
    "qtc_ms": ("5.10.2.5-5", "QTc Interval", "ms"),
    "axis_deg": ("5.10.3-13", "QRS Axis", "deg"),
}

TWELVE_LEAD_ECG = "1.2.840.10008.5.1.4.1.1.9.1.1"
GENERAL_ECG = "1.2.840.10008.5.1.4.1.1.9.1.2"
AMBULATORY_ECG = "1.2.840.10008.5.1.4.1.1.9.1.3"
ECG_SOP_CLASSES = {TWELVE_LEAD_ECG, GENERAL_ECG, AMBULATORY_ECG}
