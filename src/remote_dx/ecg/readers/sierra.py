"""Philips Sierra / PhilipsECG XML (``restingecgdata``, versions 1.03–1.04.02) → ECG.

The waveform (``waveforms/parsedwaveforms``) is base64; PageWriter carts compress it with XLI
(LZW + second-difference coding) and store III, aVR, aVL, aVF as residuals against I and II.
The ``sierraecg`` package decodes XLI and rebuilds those four leads; it is used for that case.
For ``compression="Uncompressed"`` (or none), sierraecg 0.4.0 fails (it rebuilds the limb leads in
place on a read-only buffer) and the residual step does not apply, so the 16-bit little-endian
lead blocks are split here. Amplitude: ``signalcharacteristics/signalresolution`` (µV per bit,
Philips writes 5). The cart's global measurements and statements are kept.
"""

from __future__ import annotations

import base64
import binascii
import io
import xml.etree.ElementTree as ET
from datetime import datetime

import numpy as np

from remote_dx.ecg.model import ECG, DeviceMeasurements, ECGError, PatientInfo
from remote_dx.ecg.readers._common import (
    finish,
    lead_name,
    local,
    optional_number,
    parse_number,
    parse_xml,
)


def is_sierra(root: ET.Element) -> bool:
    return local(root.tag) == "restingecgdata"


def _find(element: ET.Element | None, path: str) -> ET.Element | None:
    """Namespace-agnostic find of a '/'-separated path of local names."""
    current = element
    for part in path.split("/"):
        if current is None:
            return None
        current = next((c for c in current.iter() if local(c.tag) == part), None)
    return current


def _text(element: ET.Element | None, path: str) -> str | None:
    found = _find(element, path)
    return found.text.strip() if found is not None and found.text and found.text.strip() else None


def read_sierra(data: bytes, *, name: str = "sierra.xml") -> ECG:
    root = parse_xml(data, what=name)
    if not is_sierra(root):
        raise ECGError(f"{name}: root element is {local(root.tag)}, not restingecgdata")
    signal = _find(root, "signalcharacteristics")
    waveforms = _find(root, "parsedwaveforms")
    if signal is None or waveforms is None:
        raise ECGError(f"{name}: no signalcharacteristics/parsedwaveforms (no waveform)")
    rate = _text(signal, "samplingrate")
    if rate is None:
        raise ECGError(f"{name}: samplingrate missing, sampling rate unknown")
    sampling_rate = parse_number(rate, what=f"{name} samplingrate")
    if sampling_rate <= 0:
        raise ECGError(f"{name}: sampling rate {sampling_rate:g} Hz is not positive")
    resolution_text = _text(signal, "signalresolution") or _text(signal, "resolution")
    if resolution_text is None:
        raise ECGError(f"{name}: signalresolution missing, amplitude unknown")
    uv_per_bit = parse_number(resolution_text, what=f"{name} signalresolution")
    duration_ms = parse_number(waveforms.get("durationperchannel"), what=f"{name} duration")
    expected = round(duration_ms * sampling_rate / 1000)

    compression = waveforms.get("compressmethod") or waveforms.get("compression") or ""
    if compression.upper() == "XLI":
        labels, arrays = _decode_xli(data, name)
    elif compression in ("", "Uncompressed"):
        labels, arrays = _decode_plain(waveforms, expected, name)
    else:
        raise ECGError(f"{name}: waveform compression {compression!r} is not supported")

    leads: dict[str, np.ndarray] = {}
    for label, samples in zip(labels, arrays, strict=False):
        if len(samples) < expected:
            raise ECGError(
                f"{name}: lead {label} has {len(samples)} samples, "
                f"durationperchannel {duration_ms:g} ms needs {expected}"
            )
        leads[lead_name(label)] = (
            np.asarray(samples[:expected], dtype=np.float64) * uv_per_bit / 1000.0
        ).astype(np.float32)
    if not leads:
        raise ECGError(f"{name}: no leads in parsedwaveforms")

    ecg = ECG(
        leads=leads,
        sampling_rate=sampling_rate,
        patient=_patient(root),
        acquired_at=_acquired_at(root),
        device=_text(root, "machine"),
        source_format="philips-sierra",
        device_measurements=_measurements(root),
    )
    return finish(ecg)


def _decode_xli(data: bytes, name: str) -> tuple[list[str], list[np.ndarray]]:
    import sierraecg

    try:
        parsed = sierraecg.read_file(io.BytesIO(data))  # type: ignore[arg-type]
    except Exception as exc:  # sierraecg raises RuntimeError subclasses, binascii, index errors
        raise ECGError(f"{name}: Philips XLI waveform cannot be decoded ({exc})") from exc
    return [lead.label for lead in parsed.leads], [lead.samples for lead in parsed.leads]


def _decode_plain(
    waveforms: ET.Element, expected: int, name: str
) -> tuple[list[str], list[np.ndarray]]:
    labels = (waveforms.get("leadlabels") or "").split()
    count = int(optional_number(waveforms.get("numberofleads")) or len(labels))
    labels = labels[:count]
    if not labels:
        raise ECGError(f"{name}: parsedwaveforms has no leadlabels")
    try:
        raw = base64.b64decode("".join((waveforms.text or "").split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ECGError(f"{name}: waveform base64 is corrupt or truncated ({exc})") from exc
    needed = len(labels) * expected * 2
    if len(raw) < needed:
        raise ECGError(
            f"{name}: waveform is truncated ({len(raw)} bytes; {len(labels)} leads × "
            f"{expected} samples need {needed})"
        )
    matrix = np.frombuffer(raw[:needed], dtype="<i2").reshape(len(labels), expected)
    return labels, [matrix[i] for i in range(len(labels))]


def _patient(root: ET.Element) -> PatientInfo:
    general = _find(root, "generalpatientdata")
    last, first = _text(general, "lastname"), _text(general, "firstname")
    sex = (_text(general, "sex") or "")[:1].upper()
    age = _text(general, "years")
    return PatientInfo(
        patient_id=_text(general, "patientid"),
        name="^".join(p for p in (last, first) if p) or None,
        sex=sex if sex in ("M", "F") else None,
        age_years=optional_number(age),
    )


def _acquired_at(root: ET.Element) -> datetime | None:
    acquisition = _find(root, "dataacquisition")
    if acquisition is None or not acquisition.get("date"):
        return None
    try:
        return datetime.fromisoformat(
            f"{acquisition.get('date')}T{acquisition.get('time') or '0:0'}"
        )
    except ValueError:
        return None


def _measurements(root: ET.Element) -> DeviceMeasurements | None:
    measured = _find(root, "globalmeasurements")
    values = {
        "heart_rate": optional_number(_text(measured, "heartrate")),
        "pr_ms": optional_number(_text(measured, "pr")),
        "qrs_ms": optional_number(_text(measured, "qrsdur")),
        "qt_ms": optional_number(_text(measured, "qtint")),
        "qtc_ms": optional_number(_text(measured, "qtc")),
        "axis_deg": optional_number(_text(measured, "frontaxis")),
    }
    statements = [
        e.text.strip()
        for e in root.iter()
        if local(e.tag) == "leftstatement" and e.text and e.text.strip()
    ]
    if all(v is None for v in values.values()) and not statements:
        return None
    return DeviceMeasurements(**values, statements=statements)
