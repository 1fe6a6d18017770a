"""DICOM ECG waveforms → ECG (PS3.3 A.34.3 12-Lead, A.34.4 General, A.34.5 Ambulatory ECG;
Waveform module C.10.9, Waveform Annotation module C.10.10).

* Multiplex group: the ORIGINAL group with the most samples is the rhythm; a DERIVED or
  "MEDIAN BEAT" group (carts store their representative beat that way) is kept as
  ``ECG.median_beat``.
* Amplitude: sample × ChannelSensitivity × ChannelSensitivityCorrectionFactor + ChannelBaseline
  (C.10.9.1.4.3), in the unit of ChannelSensitivityUnitsSequence (CID 3082: uV, mV; V accepted).
* Lead names: the ChannelSourceSequence code (SCPECG ``5.6.3-9-N`` or MDC ``2:N``), then its code
  meaning, then ChannelLabel. Carts that send 8 leads (I, II, V1–V6) get III, aVR, aVL, aVF derived.
* The cart's own measurements and statements (Waveform Annotation) → ``DeviceMeasurements``.
"""

from __future__ import annotations

import io
from datetime import datetime
from typing import Any

import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from remote_dx.core.charset import decode_element
from remote_dx.ecg.dicom_codes import ECG_SOP_CLASSES, MEASUREMENT_CODES, lead_from_code
from remote_dx.ecg.model import ECG, DeviceMeasurements, ECGError, MedianBeat, PatientInfo
from remote_dx.ecg.readers._common import (
    finish,
    lead_name,
    parse_compact_datetime,
    unit_scale_to_mv,
)

_DTYPES = {(8, "SB"): np.int8, (16, "SS"): np.int16, (16, "US"): np.uint16, (32, "SL"): np.int32}


def looks_like_dicom(name: str, data: bytes) -> bool:
    return data[128:132] == b"DICM" or name.lower().endswith((".dcm", ".dicom"))


def read_dicom_waveform(data: bytes, *, name: str = "ECG.dcm") -> ECG:
    """Read one DICOM ECG waveform object (Part 10 file, or a bare dataset)."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except (InvalidDicomError, EOFError, ValueError, OSError, KeyError) as exc:
        raise ECGError(f"{name}: not a readable DICOM file ({exc})") from exc
    return dataset_to_ecg(ds, name=name)


def dataset_to_ecg(ds: Dataset, *, name: str = "DICOM") -> ECG:
    """Convert a parsed DICOM waveform dataset into the internal ECG model."""
    try:
        sop_class = str(ds.get("SOPClassUID", ""))
        groups = list(ds.get("WaveformSequence") or [])
    except Exception as exc:  # pydicom parses lazily: a truncated file fails here
        raise ECGError(f"{name}: DICOM dataset cannot be parsed ({exc})") from exc
    if not groups:
        raise ECGError(
            f"{name}: no Waveform Sequence (5400,0100); SOP class {sop_class or 'unknown'} "
            "is not an ECG waveform"
        )

    rhythm_index = _rhythm_group(groups)
    leads, rate = _read_group(groups[rhythm_index], index=rhythm_index, name=name)
    median = None
    for index, group in enumerate(groups):
        if index != rhythm_index and _is_median(group):
            try:
                beat, beat_rate = _read_group(group, index=index, name=name)
            except ECGError:
                continue  # a broken representative beat must not cost the rhythm
            median = MedianBeat(leads=beat, sampling_rate=beat_rate)
            break

    ecg = ECG(
        leads=leads,
        sampling_rate=rate,
        patient=_patient(ds),
        acquired_at=_acquired_at(ds),
        device=_device(ds),
        source_format="dicom",
        device_measurements=_device_measurements(ds, rhythm_index),
        median_beat=median,
    )
    return finish(ecg)


def _is_median(group: Dataset) -> bool:
    label = str(group.get("MultiplexGroupLabel", "")).upper()
    return (
        "MEDIAN" in label
        or "REPRESENTATIVE" in label
        or group.get("WaveformOriginality") == ("DERIVED")
    )


def _rhythm_group(groups: list[Dataset]) -> int:
    def rank(item: tuple[int, Dataset]) -> tuple[int, int, int]:
        _index, group = item
        original = group.get("WaveformOriginality") == "ORIGINAL"
        return (
            int(original and not _is_median(group)),
            int(original),
            _int(group, "NumberOfWaveformSamples"),
        )

    return max(enumerate(groups), key=rank)[0]


def _int(group: Dataset, keyword: str) -> int:
    try:
        return int(group.get(keyword) or 0)
    except (TypeError, ValueError):
        return 0


def _read_group(
    group: Dataset, *, index: int, name: str
) -> tuple[dict[str, NDArray[np.float32]], float]:
    where = f"{name}: multiplex group {index + 1}"
    channels = _int(group, "NumberOfWaveformChannels")
    samples = _int(group, "NumberOfWaveformSamples")
    if channels <= 0 or samples <= 0:
        raise ECGError(f"{where}: NumberOfWaveformChannels/Samples missing or zero")
    try:
        rate = float(group.get("SamplingFrequency") or 0)
    except (TypeError, ValueError):
        rate = 0.0
    if rate <= 0:
        raise ECGError(f"{where}: SamplingFrequency (003A,001A) missing or not positive")
    bits = _int(group, "WaveformBitsAllocated")
    interpretation = str(group.get("WaveformSampleInterpretation", ""))
    dtype = _DTYPES.get((bits, interpretation))
    if dtype is None:
        raise ECGError(
            f"{where}: unsupported sample format {bits} bits {interpretation or '(none)'}"
        )
    raw = group.get("WaveformData")
    if raw is None:
        raise ECGError(f"{where}: WaveformData (5400,1010) missing")
    raw = bytes(raw)
    expected = channels * samples * np.dtype(dtype).itemsize
    if len(raw) < expected:
        raise ECGError(
            f"{where}: WaveformData is truncated ({len(raw)} bytes; {channels} channels × "
            f"{samples} samples need {expected})"
        )
    # Samples are interleaved C1S1, C2S1, … CnS1, C1S2… (C.10.9.1.5); little endian on the wire.
    matrix = np.frombuffer(raw[:expected], dtype=np.dtype(dtype).newbyteorder("<")).reshape(
        samples, channels
    )
    definitions = list(group.get("ChannelDefinitionSequence") or [])
    if len(definitions) != channels:
        raise ECGError(f"{where}: {len(definitions)} channel definitions for {channels} channels")
    leads: dict[str, NDArray[np.float32]] = {}
    for number, channel in enumerate(definitions, start=1):
        label = _channel_lead(channel) or f"Channel {number}"
        scale_mv, baseline = _channel_scale(channel, where=f"{where}, channel {label}")
        if label in leads:
            label = f"{label} ({number})"
        leads[label] = (matrix[:, number - 1].astype(np.float64) * scale_mv + baseline).astype(
            np.float32
        )
    return leads, rate


def _channel_lead(channel: Dataset) -> str | None:
    sources = channel.get("ChannelSourceSequence") or []
    if sources:
        code = sources[0]
        by_code = lead_from_code(code.get("CodeValue"))
        if by_code:
            return by_code
        meaning = code.get("CodeMeaning")
        if meaning:
            return lead_name(str(meaning))
    label = channel.get("ChannelLabel")
    return lead_name(str(label)) if label else None


def _channel_scale(channel: Dataset, *, where: str) -> tuple[float, float]:
    """(mV per stored unit, baseline in mV) for one channel."""
    sensitivity = channel.get("ChannelSensitivity")
    if sensitivity in (None, ""):
        raise ECGError(f"{where}: ChannelSensitivity (003A,0210) missing, amplitude unknown")
    units = channel.get("ChannelSensitivityUnitsSequence") or []
    unit = units[0].get("CodeValue") if units else None
    to_mv = unit_scale_to_mv(unit, what=where)
    correction = channel.get("ChannelSensitivityCorrectionFactor")
    correction = 1.0 if correction in (None, "") else float(correction)
    baseline = channel.get("ChannelBaseline")
    baseline = 0.0 if baseline in (None, "") else float(baseline)
    return float(sensitivity) * correction * to_mv, baseline * to_mv


def _text(ds: Dataset, keyword: str) -> str | None:
    """Text in the dataset's character set (GB18030 and ISO 2022 IR 58 included)."""
    value = decode_element(ds, keyword)
    return value.strip() if value and value.strip() else None


def _patient(ds: Dataset) -> PatientInfo:
    age = None
    age_text = str(ds.get("PatientAge", "") or "")
    if len(age_text) == 4 and age_text[:3].isdigit():
        factor = {"Y": 1.0, "M": 1 / 12, "W": 7 / 365.25, "D": 1 / 365.25}.get(age_text[3])
        age = int(age_text[:3]) * factor if factor else None
    return PatientInfo(
        patient_id=_text(ds, "PatientID"),
        name=_text(ds, "PatientName"),
        sex=(str(ds.get("PatientSex") or "").strip() or None),
        birth_date=(str(ds.get("PatientBirthDate") or "").strip() or None),
        age_years=age,
    )


def _acquired_at(ds: Dataset) -> datetime | None:
    for text in (
        ds.get("AcquisitionDateTime"),
        f"{ds.get('ContentDate', '')}{ds.get('ContentTime', '')}",
        f"{ds.get('StudyDate', '')}{ds.get('StudyTime', '')}",
    ):
        value = parse_compact_datetime(str(text) if text else None)
        if value:
            return value
    return None


def _device(ds: Dataset) -> str | None:
    parts = [str(ds.get(k) or "").strip() for k in ("Manufacturer", "ManufacturerModelName")]
    text = " ".join(p for p in parts if p)
    return text or None


def _device_measurements(ds: Dataset, rhythm_index: int) -> DeviceMeasurements | None:
    annotations = list(ds.get("WaveformAnnotationSequence") or [])
    if not annotations:
        return None
    values: dict[str, Any] = {}
    statements: list[str] = []
    for item in annotations:
        text = item.get("UnformattedTextValue")
        if text and str(text).strip():
            statements.append(str(text).strip())
            continue
        concepts = item.get("ConceptNameCodeSequence") or []
        numeric = item.get("NumericValue")
        if not concepts or numeric in (None, ""):
            continue
        attribute = MEASUREMENT_CODES.get(str(concepts[0].get("CodeValue", "")))
        if attribute is None:
            continue
        try:
            number = float(numeric if not isinstance(numeric, list) else numeric[0])
        except (TypeError, ValueError):
            continue
        values.setdefault(attribute, number)
    rr = values.pop("rr_ms", None)
    if "heart_rate" not in values and rr:
        # The cart stated its mean RR; the rate is the same statement in beats per minute.
        values["heart_rate"] = round(60000.0 / rr, 1)
    if not values and not statements:
        return None
    return DeviceMeasurements(**values, statements=statements)


__all__ = ["ECG_SOP_CLASSES", "dataset_to_ecg", "looks_like_dicom", "read_dicom_waveform"]
