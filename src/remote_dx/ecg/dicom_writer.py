"""ECG → DICOM ECG waveform object, so every uploaded ECG can be read by DICOM tools.

Writes the 12-Lead ECG IOD (PS3.3 A.34.3): Patient, General Study, General Series, General
Equipment, Waveform Identification, Waveform (C.10.9), Acquisition Context, Waveform Annotation
(the cart's own measurements, C.10.10) and SOP Common modules.

Waveform module: one multiplex group "RHYTHM" (WaveformOriginality ORIGINAL), 16-bit signed
samples (SS), every channel in µV (UCUM ``uV``, CID 3082) with ChannelSensitivity 1 µV per bit
(coarser only for a lead whose range exceeds ±32.767 mV), baseline 0, sample skew 0, lead codes
from CID 3001 (SCPECG ``5.6.3-9-N``). A median beat, when the source had one, is a second group
(DERIVED, "MEDIAN BEAT") as carts write it.

The SOP class follows the IOD limits (A.34.3.4 / A.34.4.4 / A.34.5.4): 12-Lead ECG allows ≤ 13
channels, 200–1000 Hz and ≤ 16384 samples; longer recordings (e.g. a 30 min Holter-like WFDB
record) become General ECG (≤ 24 channels, 200–1000 Hz), below 200 Hz Ambulatory ECG
(50–1000 Hz, ≤ 12 channels). Recordings above 1000 Hz are resampled to 500 Hz
(polyphase, scipy) since no ECG IOD accepts them.
"""

from __future__ import annotations

import importlib.metadata
import io
from datetime import datetime
from fractions import Fraction

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

from remote_dx.ecg.dicom_codes import (
    AMBULATORY_ECG,
    GENERAL_ECG,
    LEAD_CODES,
    LEAD_MEANINGS,
    LOCAL_LEAD_SCHEME,
    MEASUREMENT_MEANINGS,
    SCPECG,
    SCPECG_VERSION,
    TWELVE_LEAD_ECG,
)
from remote_dx.ecg.model import ECG, DeviceMeasurements, ECGError, PatientInfo

MAX_INT16 = 32767


def _version() -> str:
    try:
        return importlib.metadata.version("remote-dx")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree
        return "dev"


def _code(value: str, scheme: str, meaning: str, version: str | None = None) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    if version:
        item.CodingSchemeVersion = version
    item.CodeMeaning = meaning
    return item


def choose_sop_class(n_channels: int, n_samples: int, sampling_rate: float) -> str:
    """The most specific ECG SOP class whose IOD limits this recording fits."""
    if 200 <= sampling_rate <= 1000 and n_channels <= 13 and n_samples <= 16384:
        return TWELVE_LEAD_ECG
    if 200 <= sampling_rate <= 1000 and n_channels <= 24:
        return GENERAL_ECG
    if 50 <= sampling_rate <= 1000 and n_channels <= 12:
        return AMBULATORY_ECG
    raise ECGError(
        f"{n_channels} channels at {sampling_rate:g} Hz fit no DICOM ECG waveform IOD "
        "(at most 24 channels, 50–1000 Hz)"
    )


def _resampled(ecg: ECG) -> tuple[dict[str, np.ndarray], float]:
    if ecg.sampling_rate <= 1000:
        return ecg.leads, ecg.sampling_rate
    from scipy.signal import resample_poly

    ratio = Fraction(500, 1) / Fraction(ecg.sampling_rate).limit_denominator(1000)
    leads = {
        name: resample_poly(values.astype(np.float64), ratio.numerator, ratio.denominator).astype(
            np.float32
        )
        for name, values in ecg.leads.items()
    }
    return leads, 500.0


def _multiplex_group(
    leads: dict[str, np.ndarray], rate: float, *, label: str, originality: str
) -> Dataset:
    names = list(leads)
    n_samples = len(leads[names[0]])
    group = Dataset()
    group.MultiplexGroupTimeOffset = "0"
    group.WaveformOriginality = originality
    group.NumberOfWaveformChannels = len(names)
    group.NumberOfWaveformSamples = n_samples
    group.SamplingFrequency = f"{rate:g}"
    group.MultiplexGroupLabel = label
    matrix = np.empty((n_samples, len(names)), dtype="<i2")
    channels = []
    for column, name in enumerate(names):
        microvolts = leads[name].astype(np.float64) * 1000.0
        peak = float(np.max(np.abs(microvolts))) if n_samples else 0.0
        # 1 µV per bit keeps every source's resolution (carts store 1–5 µV); only a lead whose
        # range exceeds ±32.767 mV (saturation, DC offset) needs a coarser step.
        sensitivity = 1.0 if peak <= MAX_INT16 else float(np.ceil(peak / MAX_INT16 * 1000) / 1000)
        matrix[:, column] = np.clip(np.rint(microvolts / sensitivity), -MAX_INT16, MAX_INT16)
        channel = Dataset()
        channel.ChannelLabel = name[:16]
        if name in LEAD_CODES:
            source = _code(
                f"5.6.3-9-{LEAD_CODES[name]}", SCPECG, LEAD_MEANINGS[name], SCPECG_VERSION
            )
        else:
            source = _code(name[:16], LOCAL_LEAD_SCHEME, name[:64])
        channel.ChannelSourceSequence = Sequence([source])
        channel.ChannelSensitivity = f"{sensitivity:g}"
        channel.ChannelSensitivityUnitsSequence = Sequence(
            [_code("uV", "UCUM", "microvolt", "1.4")]
        )
        channel.ChannelSensitivityCorrectionFactor = "1"
        channel.ChannelBaseline = "0"
        channel.ChannelSampleSkew = "0"
        channel.WaveformBitsStored = 16
        channels.append(channel)
    group.ChannelDefinitionSequence = Sequence(channels)
    group.WaveformBitsAllocated = 16
    group.WaveformSampleInterpretation = "SS"
    group.WaveformData = matrix.tobytes()
    return group


def _annotations(measurements: DeviceMeasurements | None) -> list[Dataset]:
    if measurements is None:
        return []
    items = []
    for text in measurements.statements:
        item = Dataset()
        item.UnformattedTextValue = text[:1024]
        item.ReferencedWaveformChannels = [1, 0]  # group 1, all channels (C.10.10.1.1)
        item.AnnotationGroupNumber = 0
        items.append(item)
    for attribute, (code, meaning, unit) in MEASUREMENT_MEANINGS.items():
        value = getattr(measurements, attribute)
        if value is None:
            continue
        item = Dataset()
        item.MeasurementUnitsCodeSequence = Sequence([_code(unit, "UCUM", unit, "1.4")])
        item.ConceptNameCodeSequence = Sequence([_code(code, SCPECG, meaning, SCPECG_VERSION)])
        item.ReferencedWaveformChannels = [1, 0]
        item.AnnotationGroupNumber = 1
        item.NumericValue = f"{value:g}"
        items.append(item)
    return items


def _age_string(patient: PatientInfo) -> str | None:
    if patient.age_years is None or patient.age_years < 0:
        return None
    if patient.age_years >= 1:
        return f"{min(int(patient.age_years), 999):03d}Y"
    return f"{int(patient.age_years * 12):03d}M"


def ecg_to_dataset(
    ecg: ECG,
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_instance_uid: str | None = None,
    patient: PatientInfo | None = None,
    device: str | None = None,
    institution: str | None = None,
    station_name: str | None = None,
    accession_number: str | None = None,
    sop_class_uid: str | None = None,
) -> Dataset:
    """Build the DICOM ECG waveform dataset (with file meta) for ``ecg``.

    ``patient``/``device`` override what the ECG carries (the upload form's fields win over the
    file's). The SOP class is chosen from the IOD limits unless ``sop_class_uid`` is given.
    """
    if not ecg.leads:
        raise ECGError("no leads to write")
    leads, rate = _resampled(ecg)
    n_samples = len(next(iter(leads.values())))
    sop_class = sop_class_uid or choose_sop_class(len(leads), n_samples, rate)
    who = patient or ecg.patient
    when = ecg.acquired_at or datetime.now()
    instance_uid = sop_instance_uid or generate_uid()

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: Chinese names as they are
    ds.InstanceCreationDate = datetime.now().strftime("%Y%m%d")
    ds.InstanceCreationTime = datetime.now().strftime("%H%M%S")
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = instance_uid
    # Patient (C.7.1.1)
    ds.PatientName = who.name or ""
    ds.PatientID = who.patient_id or ""
    ds.PatientBirthDate = who.birth_date or ""
    ds.PatientSex = who.sex if who.sex in ("M", "F", "O") else ""
    age = _age_string(who)
    if age:
        ds.PatientAge = age
    # General Study (C.7.2.1)
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.StudyDate = when.strftime("%Y%m%d")
    ds.StudyTime = when.strftime("%H%M%S")
    ds.ReferringPhysicianName = ""
    ds.StudyID = ""
    ds.AccessionNumber = accession_number or ""
    ds.StudyDescription = "ECG"
    # General Series (C.7.3.1)
    ds.Modality = "ECG"
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.SeriesNumber = "1"
    # General Equipment (C.7.5.1)
    maker = device or ecg.device or ""
    ds.Manufacturer = maker
    if institution:
        ds.InstitutionName = institution
    if station_name:
        ds.StationName = station_name[:16]
    ds.SoftwareVersions = f"remote-dx {_version()} ({ecg.source_format})"
    # Waveform Identification (C.10.8)
    ds.InstanceNumber = "1"
    ds.ContentDate = when.strftime("%Y%m%d")
    ds.ContentTime = when.strftime("%H%M%S")
    ds.AcquisitionDateTime = when.strftime("%Y%m%d%H%M%S")
    # Acquisition Context (C.7.6.14): type 2, empty is valid
    ds.AcquisitionContextSequence = Sequence([])
    # Waveform (C.10.9)
    groups = [_multiplex_group(leads, rate, label="RHYTHM", originality="ORIGINAL")]
    beat = ecg.median_beat
    if beat is not None and beat.leads and 200 <= beat.sampling_rate <= 1000:
        lengths = {len(v) for v in beat.leads.values()}
        if len(lengths) == 1 and len(beat.leads) <= 13:
            groups.append(
                _multiplex_group(
                    beat.leads, beat.sampling_rate, label="MEDIAN BEAT", originality="DERIVED"
                )
            )
    ds.WaveformSequence = Sequence(groups)
    annotations = _annotations(ecg.device_measurements)
    if annotations:
        ds.WaveformAnnotationSequence = Sequence(annotations)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    return ds


def ecg_to_part10_bytes(ecg: ECG, **kwargs: object) -> bytes:
    """``ecg_to_dataset`` written as a DICOM Part 10 file (Explicit VR Little Endian)."""
    ds = ecg_to_dataset(ecg, **kwargs)  # type: ignore[arg-type]
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
