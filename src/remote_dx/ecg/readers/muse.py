"""GE MUSE ``RestingECG`` XML → ECG.

MUSE exports carry ``Waveform`` elements of type ``Rhythm`` (the 10 s recording) and ``Median``.
Each holds ``SampleBase`` (Hz; ``SampleExponent`` scales it by 10^n) and one ``LeadData`` per
stored lead: ``LeadID``, ``LeadSampleCountTotal``, ``LeadAmplitudeUnitsPerBit`` with
``LeadAmplitudeUnits`` (MICROVOLTS), and ``WaveFormData`` — base64 of 16-bit little-endian
samples. GE stores 8 leads (I, II, V1–V6); III, aVR, aVL, aVF are derived (Einthoven/Goldberger).
``RestingECGMeasurements`` and ``Diagnosis/DiagnosisStatement/StmtText`` are the cart's own
measurements and statements. MUSE writes ``<!DOCTYPE RestingECG SYSTEM "restecg.dtd">``; that is
accepted, entity declarations are not.
"""

from __future__ import annotations

import base64
import binascii
import xml.etree.ElementTree as ET
from datetime import datetime

import numpy as np

from remote_dx.ecg.model import ECG, DeviceMeasurements, ECGError, MedianBeat, PatientInfo
from remote_dx.ecg.readers._common import (
    finish,
    lead_name,
    local,
    optional_number,
    parse_number,
    parse_xml,
    require_limb_pair,
    unit_scale_to_mv,
)

_UNITS = {"MICROVOLTS": "uV", "MILLIVOLTS": "mV", "VOLTS": "V"}


def is_muse(root: ET.Element) -> bool:
    return local(root.tag) == "RestingECG"


def _text(element: ET.Element | None, tag: str) -> str | None:
    if element is None:
        return None
    found = element.find(tag)
    return found.text.strip() if found is not None and found.text and found.text.strip() else None


def read_muse(data: bytes, *, name: str = "muse.xml") -> ECG:
    root = parse_xml(data, what=name)
    if not is_muse(root):
        raise ECGError(f"{name}: root element is {local(root.tag)}, not RestingECG")
    waveforms = {(_text(w, "WaveformType") or "").lower(): w for w in root.findall("Waveform")}
    rhythm = waveforms.get("rhythm")
    if rhythm is None:
        raise ECGError(f"{name}: no Waveform of type Rhythm")
    leads, rate = _read_waveform(rhythm, what=f"{name} rhythm")
    require_limb_pair(leads, what=name)

    median = None
    if "median" in waveforms:
        try:
            beat, beat_rate = _read_waveform(waveforms["median"], what=f"{name} median")
            median = MedianBeat(leads=beat, sampling_rate=beat_rate)
        except ECGError:
            median = None  # the rhythm is what matters
        else:
            if "I" in beat and "II" in beat:
                median_ecg = ECG(leads=beat, sampling_rate=beat_rate).complete_limb_leads()
                median.leads = median_ecg.ordered().leads

    test = root.find("TestDemographics")
    ecg = ECG(
        leads=leads,
        sampling_rate=rate,
        patient=_patient(root.find("PatientDemographics")),
        acquired_at=_acquired_at(test),
        device=" ".join(p for p in ("GE", _text(test, "AcquisitionDevice")) if p)
        if _text(test, "AcquisitionDevice")
        else None,
        source_format="ge-muse",
        device_measurements=_measurements(root),
        median_beat=median,
    )
    return finish(ecg)


def _read_waveform(waveform: ET.Element, *, what: str) -> tuple[dict[str, np.ndarray], float]:
    base = _text(waveform, "SampleBase")
    if base is None:
        raise ECGError(f"{what}: SampleBase missing, sampling rate unknown")
    exponent = optional_number(_text(waveform, "SampleExponent")) or 0.0
    rate = parse_number(base, what=f"{what} SampleBase") * 10**exponent
    if rate <= 0:
        raise ECGError(f"{what}: sampling rate {rate:g} Hz is not positive")
    leads: dict[str, np.ndarray] = {}
    for lead in waveform.findall("LeadData"):
        label = _text(lead, "LeadID")
        if not label:
            raise ECGError(f"{what}: a LeadData has no LeadID")
        where = f"{what} lead {label}"
        count = int(parse_number(_text(lead, "LeadSampleCountTotal"), what=f"{where} count"))
        per_bit = parse_number(_text(lead, "LeadAmplitudeUnitsPerBit"), what=f"{where} scale")
        unit_text = (_text(lead, "LeadAmplitudeUnits") or "").upper()
        scale = per_bit * unit_scale_to_mv(_UNITS.get(unit_text, unit_text), what=where)
        size = int(optional_number(_text(lead, "LeadSampleSize")) or 2)
        if size != 2:
            raise ECGError(f"{where}: {size}-byte samples are not supported (2 expected)")
        try:
            raw = base64.b64decode(
                "".join((_text(lead, "WaveFormData") or "").split()), validate=True
            )
        except (binascii.Error, ValueError) as exc:
            raise ECGError(f"{where}: WaveFormData base64 is corrupt or truncated ({exc})") from exc
        if len(raw) < 2 * count:
            raise ECGError(
                f"{where}: WaveFormData is truncated ({len(raw)} bytes for {count} samples)"
            )
        samples = np.frombuffer(raw[: 2 * count], dtype="<i2")
        leads[lead_name(label)] = (samples.astype(np.float64) * scale).astype(np.float32)
    if not leads:
        raise ECGError(f"{what}: no LeadData")
    return leads, rate


def _patient(demographics: ET.Element | None) -> PatientInfo:
    last = _text(demographics, "PatientLastName")
    first = _text(demographics, "PatientFirstName")
    sex = (_text(demographics, "Gender") or "")[:1].upper()
    birth = _text(demographics, "DateofBirth")
    birth_date = None
    if birth:
        try:
            birth_date = datetime.strptime(birth, "%m-%d-%Y").strftime("%Y%m%d")
        except ValueError:
            birth_date = None
    age = optional_number(_text(demographics, "PatientAge"))
    if age is not None and (_text(demographics, "AgeUnits") or "YEARS").upper() != "YEARS":
        age = None
    return PatientInfo(
        patient_id=_text(demographics, "PatientID"),
        name="^".join(p for p in (last, first) if p) or None,
        sex=sex if sex in ("M", "F") else None,
        birth_date=birth_date,
        age_years=age,
    )


def _acquired_at(test: ET.Element | None) -> datetime | None:
    date, time = _text(test, "AcquisitionDate"), _text(test, "AcquisitionTime")
    if not date:
        return None
    try:
        return datetime.strptime(f"{date} {time or '00:00:00'}", "%m-%d-%Y %H:%M:%S")
    except ValueError:
        return None


def _measurements(root: ET.Element) -> DeviceMeasurements | None:
    measured = root.find("RestingECGMeasurements")
    values = {
        "heart_rate": optional_number(_text(measured, "VentricularRate")),
        "pr_ms": optional_number(_text(measured, "PRInterval")),
        "qrs_ms": optional_number(_text(measured, "QRSDuration")),
        "qt_ms": optional_number(_text(measured, "QTInterval")),
        "qtc_ms": optional_number(_text(measured, "QTCorrected")),
        "axis_deg": optional_number(_text(measured, "RAxis")),
    }
    statements = [
        text.strip()
        for diagnosis in root.findall("Diagnosis")
        for statement in diagnosis.findall("DiagnosisStatement")
        if (text := _text(statement, "StmtText"))
    ]
    if all(v is None for v in values.values()) and not statements:
        return None
    return DeviceMeasurements(**values, statements=statements)
