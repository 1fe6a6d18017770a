"""Codes shared by the DICOM SR and the FHIR export.

LOINC (http://loinc.org, DICOM coding scheme "LN") for the exam and the ECG measurements, UCUM
(http://unitsofmeasure.org, DICOM "UCUM") for units, HL7 v2 table 0074 for the report category.

- 11524-6 "EKG study"; 36643-5 "XR Chest 2 Views"; 36554-4 "XR Chest Single view" (a township DR
  usually takes one PA view; two or more images of the chest are the PA + lateral pair);
  18748-4 "Diagnostic imaging study" for everything else (the body part goes in the text).
- 8867-4 "Heart rate", 8625-6 "P-R Interval", 8633-0 "QRS duration", 8634-8 "Q-T interval",
  8636-3 "Q-T interval corrected", 8632-2 "QRS axis".
"""

from __future__ import annotations

from dataclasses import dataclass

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"


@dataclass(frozen=True)
class Code:
    code: str
    display: str
    scheme: str = "LN"  # DICOM Coding Scheme Designator


@dataclass(frozen=True)
class Measurement:
    key: str  # key in the report content's "measurements" (the ECG analysis' names)
    label_zh: str
    code: Code
    unit: str  # UCUM code
    unit_display: str


ECG_STUDY = Code("11524-6", "EKG study")
CHEST_2_VIEWS = Code("36643-5", "XR Chest 2 Views")
CHEST_1_VIEW = Code("36554-4", "XR Chest Single view")
IMAGING_STUDY = Code("18748-4", "Diagnostic imaging study")

# DICOM (PS3.16, "DCM" scheme) concepts for the SR's text items.
FINDING = Code("121071", "Finding", "DCM")
IMPRESSION = Code("121073", "Impression", "DCM")

MEASUREMENTS: tuple[Measurement, ...] = (
    Measurement("heart_rate", "心率", Code("8867-4", "Heart rate"), "/min", "次/分"),
    Measurement("pr_ms", "PR 间期", Code("8625-6", "P-R Interval"), "ms", "ms"),
    Measurement("qrs_ms", "QRS 时限", Code("8633-0", "QRS duration"), "ms", "ms"),
    Measurement("qt_ms", "QT 间期", Code("8634-8", "Q-T interval"), "ms", "ms"),
    Measurement(
        "qtc_bazett_ms", "QTc (Bazett)", Code("8636-3", "Q-T interval corrected"), "ms", "ms"
    ),
    Measurement("axis_deg", "QRS 电轴", Code("8632-2", "QRS axis"), "deg", "°"),
)
MEASUREMENT_BY_KEY = {m.key: m for m in MEASUREMENTS}
# Names a report template may use for the same values.
ALIASES = {
    "hr": "heart_rate",
    "pr": "pr_ms",
    "qrs": "qrs_ms",
    "qt": "qt_ms",
    "qtc": "qtc_bazett_ms",
    "qtc_ms": "qtc_bazett_ms",
    "axis": "axis_deg",
}


def measurement_values(values: dict[str, float]) -> list[tuple[Measurement, float]]:
    """The known measurements present in ``values``, in the table's order."""
    by_key: dict[str, float] = {}
    for key, value in values.items():
        canonical = ALIASES.get(key.lower(), key)
        if canonical in MEASUREMENT_BY_KEY:
            by_key.setdefault(canonical, value)
    return [(m, by_key[m.key]) for m in MEASUREMENTS if m.key in by_key]


def exam_code(modality: str | None, body_part: str | None, num_images: int, is_ecg: bool) -> Code:
    if is_ecg:
        return ECG_STUDY
    part = (body_part or "").upper()
    if part in ("CHEST", "THORAX", "LUNG", "胸部") or "CHEST" in part:
        return CHEST_2_VIEWS if num_images >= 2 else CHEST_1_VIEW
    return IMAGING_STUDY
