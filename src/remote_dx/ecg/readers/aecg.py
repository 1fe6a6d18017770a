"""HL7 v3 annotated ECG (aECG, "FDA XML") → ECG.

Structure read (HL7 aECG Implementation Guide, PORT_MT020001): ``AnnotatedECG/component/series``;
the ``RHYTHM`` series is the recording (a ``REPRESENTATIVE_BEAT`` series under
``derivation/derivedSeries`` becomes ``ECG.median_beat``). In its ``sequenceSet`` one sequence is
time (``TIME_ABSOLUTE``/``TIME_RELATIVE``, GLIST with ``increment`` = 1 / sampling frequency) and
each other is a lead (``MDC_ECG_LEAD_*``): SLIST_PQ ``value = origin + scale × digit`` in the
units given on origin and scale (normally uV). Subject demographics, the device, and the cart's
annotations (``MDC_ECG_TIME_PD_PR/QRS/QT/QTc``, heart rate, QRS axis — median over beats when
given per beat — and rhythm/interpretation statements) are read as well.

The XML is untrusted: entity declarations are refused before parsing (see ``parse_xml``).
"""

from __future__ import annotations

import statistics
import xml.etree.ElementTree as ET

import numpy as np

from remote_dx.ecg.model import ECG, DeviceMeasurements, ECGError, MedianBeat, PatientInfo
from remote_dx.ecg.readers._common import (
    finish,
    lead_name,
    local,
    optional_number,
    parse_compact_datetime,
    parse_number,
    parse_xml,
    unit_scale_to_mv,
)

NS = "urn:hl7-org:v3"
XSI_TYPE = "{http://www.w3.org/2001/XMLSchema-instance}type"

_MEASUREMENT_CODES = {
    "MDC_ECG_TIME_PD_PR": "pr_ms",
    "MDC_ECG_TIME_PD_PQ": "pr_ms",
    "MDC_ECG_TIME_PD_QRS": "qrs_ms",
    "MDC_ECG_TIME_PD_QT": "qt_ms",
    "MDC_ECG_TIME_PD_QTc": "qtc_ms",
    "MDC_ECG_HEART_RATE": "heart_rate",
    "MDC_ECG_ANGLE_QRS_FRONT": "axis_deg",
}


def _q(path: str) -> str:
    """Path in the HL7 v3 namespace: 'a/b' → '{urn:hl7-org:v3}a/{urn:hl7-org:v3}b'."""
    return "/".join(
        part if part in (".", "..") or part.startswith("*") else f"{{{NS}}}{part}"
        for part in path.split("/")
    )


def is_aecg(root: ET.Element) -> bool:
    return local(root.tag) == "AnnotatedECG"


def read_aecg(data: bytes, *, name: str = "aECG.xml") -> ECG:
    root = parse_xml(data, what=name)
    if not is_aecg(root):
        raise ECGError(f"{name}: root element is {local(root.tag)}, not AnnotatedECG")
    series_list = root.findall(_q("component/series"))
    if not series_list:
        raise ECGError(f"{name}: no <series> (no waveform) in the aECG")
    rhythm = next(
        (s for s in series_list if _code(s) == "RHYTHM"),
        series_list[0],
    )
    leads, rate = _read_series(rhythm, what=f"{name} rhythm series")

    median = None
    for derived in rhythm.findall(_q("derivation/derivedSeries")):
        if _code(derived) == "REPRESENTATIVE_BEAT":
            try:
                beat, beat_rate = _read_series(derived, what=f"{name} representative beat")
            except ECGError:
                break  # the rhythm is what matters; a broken median beat is dropped
            median = MedianBeat(leads=beat, sampling_rate=beat_rate)
            break

    ecg = ECG(
        leads=leads,
        sampling_rate=rate,
        patient=_patient(root),
        acquired_at=_acquired_at(root, rhythm),
        device=_device(rhythm),
        source_format="hl7-aecg",
        device_measurements=_measurements(root),
        median_beat=median,
    )
    return finish(ecg)


def _code(element: ET.Element) -> str | None:
    code = element.find(_q("code"))
    return code.get("code") if code is not None else None


def _read_series(series: ET.Element, *, what: str) -> tuple[dict[str, np.ndarray], float]:
    sets = series.findall(_q("component/sequenceSet"))
    if not sets:
        raise ECGError(f"{what}: no <sequenceSet>")
    rate: float | None = None
    leads: dict[str, np.ndarray] = {}
    for sequence_set in sets:
        for sequence in sequence_set.findall(_q("component/sequence")):
            code = _code(sequence) or ""
            value = sequence.find(_q("value"))
            if value is None:
                continue
            if code.startswith("TIME_"):
                rate = _rate(value, what=what)
            elif code.startswith("MDC_ECG_LEAD_") or value.get(XSI_TYPE) == "SLIST_PQ":
                label = lead_name(code) if code else f"Channel {len(leads) + 1}"
                leads[label] = _digits(value, what=f"{what}, lead {label}")
        if leads:
            break  # the first set of simultaneously recorded leads is the recording
    if not leads:
        raise ECGError(f"{what}: no lead sequences (MDC_ECG_LEAD_*)")
    if rate is None:
        raise ECGError(f"{what}: no time sequence, so the sampling rate is unknown")
    lengths = {n: len(v) for n, v in leads.items()}
    if len(set(lengths.values())) != 1:
        raise ECGError(f"{what}: leads have different lengths {lengths}")
    return leads, rate


def _rate(value: ET.Element, *, what: str) -> float:
    increment = value.find(_q("increment"))
    if increment is None:
        raise ECGError(f"{what}: time sequence has no <increment>, sampling rate unknown")
    step = parse_number(increment.get("value"), what=f"{what} time increment")
    unit = (increment.get("unit") or "s").strip()
    seconds = {"s": 1.0, "ms": 1e-3, "us": 1e-6}.get(unit)
    if seconds is None:
        raise ECGError(f"{what}: time increment unit {unit!r} not understood")
    if step <= 0:
        raise ECGError(f"{what}: time increment {step:g} {unit} is not positive")
    return round(1.0 / (step * seconds), 6)


def _digits(value: ET.Element, *, what: str) -> np.ndarray:
    origin = value.find(_q("origin"))
    scale = value.find(_q("scale"))
    digits = value.find(_q("digits"))
    if scale is None or digits is None:
        raise ECGError(f"{what}: SLIST_PQ without <scale> or <digits>")
    scale_value = parse_number(scale.get("value"), what=f"{what} scale")
    scale_mv = scale_value * unit_scale_to_mv(scale.get("unit"), what=f"{what} scale")
    origin_mv = 0.0
    if origin is not None:
        origin_mv = parse_number(origin.get("value"), what=f"{what} origin") * unit_scale_to_mv(
            origin.get("unit") or scale.get("unit"), what=f"{what} origin"
        )
    try:
        numbers = np.array((digits.text or "").split(), dtype=np.float64)
    except ValueError:
        raise ECGError(f"{what}: <digits> holds something that is not a number") from None
    if numbers.size == 0:
        raise ECGError(f"{what}: <digits> is empty")
    return (origin_mv + numbers * scale_mv).astype(np.float32)


def _patient(root: ET.Element) -> PatientInfo:
    subject = root.find(_q("componentOf/timepointEvent/componentOf/subjectAssignment/subject"))
    patient = PatientInfo()
    if subject is None:
        return patient
    trial_subject = subject.find(_q("trialSubject"))
    if trial_subject is None:
        return patient
    ident = trial_subject.find(_q("id"))
    if ident is not None:
        patient.patient_id = ident.get("extension") or ident.get("root")
    person = trial_subject.find(_q("subjectDemographicPerson"))
    if person is not None:
        name = person.find(_q("name"))
        if name is not None:
            family = name.find(_q("family"))
            given = name.find(_q("given"))
            if family is not None or given is not None:
                patient.name = "^".join(
                    (e.text or "").strip() for e in (family, given) if e is not None
                )
            elif name.text and name.text.strip():
                patient.name = name.text.strip()
        gender = person.find(_q("administrativeGenderCode"))
        if gender is not None and (gender.get("code") or "")[:1].upper() in ("M", "F"):
            patient.sex = gender.get("code", "")[:1].upper()
        birth = person.find(_q("birthTime"))
        if birth is not None and birth.get("value"):
            patient.birth_date = birth.get("value", "")[:8]
    return patient


def _acquired_at(root: ET.Element, series: ET.Element):
    for path in ("effectiveTime/low", "effectiveTime/center"):
        for element in (series, root):
            found = element.find(_q(path))
            if found is not None:
                value = parse_compact_datetime(found.get("value"))
                if value:
                    return value
    return None


def _device(series: ET.Element) -> str | None:
    device = series.find(_q("author/seriesAuthor/manufacturedSeriesDevice"))
    maker = series.find(_q("author/seriesAuthor/manufacturerOrganization/name"))
    parts = []
    if maker is not None and maker.text:
        parts.append(maker.text.strip())
    if device is not None:
        model = device.find(_q("manufacturerModelName"))
        if model is not None and model.text:
            parts.append(model.text.strip())
    return " ".join(parts) or None


def _measurements(root: ET.Element) -> DeviceMeasurements | None:
    found: dict[str, list[float]] = {}
    statements: list[str] = []
    for annotation in root.iter(f"{{{NS}}}annotation"):
        code = _code(annotation) or ""
        value = annotation.find(_q("value"))
        if value is None:
            continue
        kind = value.get(XSI_TYPE, "")
        if code in _MEASUREMENT_CODES and kind == "PQ":
            number = optional_number(value.get("value"))
            if number is not None:
                found.setdefault(_MEASUREMENT_CODES[code], []).append(number)
        elif code == "MDC_ECG_RHY" or code.startswith("MDC_ECG_INTERPRETATION"):
            text = value.get("displayName") or (value.text or "").strip() or value.get("code")
            if text and text not in statements:
                statements.append(text)
    if not found and not statements:
        return None
    # Per-beat values (the HL7 example gives one per beat) are summarised by their median.
    values = {key: float(statistics.median(numbers)) for key, numbers in found.items()}
    return DeviceMeasurements(**values, statements=statements)
