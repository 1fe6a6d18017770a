"""The exams a simulated township takes: 12-lead resting ECGs (DICOM waveform, as a cart sends
them) and chest DX images, built in memory with a patient and the time of acquisition.

ECGs are synthetic but physiological enough for the real analysis to judge them: a sinus rhythm
at the requested rate (a rate < 40/min is a critical value, :mod:`remote_dx.ecg.analysis.critical`)
and, for a technically unsatisfactory recording, leads lost (flat: electrode off) so the quality
check (:mod:`remote_dx.ecg.analysis.quality`) sends it back. The DX is small (256 × 256, 12 bits
stored) so a simulated year stays light; the hub files and previews it like a full-size one.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from remote_dx.core.clock import SHANGHAI
from remote_dx.ecg.dicom_writer import ecg_to_part10_bytes
from remote_dx.ecg.model import ECG, PatientInfo

DX_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation


def synthetic_ecg(
    rng: np.random.Generator, *, hr: float, rate: float = 500.0, seconds: float = 10.0,
    leads_off: int = 0,
) -> ECG:  # fmt: skip
    """A 12-lead sinus rhythm in mV (Gaussian P, QRS, T per lead, limb leads consistent by
    Einthoven), a little noise; ``leads_off`` precordial leads flat (electrodes off)."""
    t = np.arange(int(seconds * rate)) / rate
    period = 60.0 / hr
    phase = t % period

    def wave(centre: float, width: float, height: float) -> np.ndarray:
        return height * np.exp(-0.5 * ((phase - centre) / width) ** 2)

    # The T wave ends ~0.4·√RR after the QRS (Bazett QTc ≈ 400 ms): no false long-QT alarms.
    t_centre = 0.15 + 0.36 * float(np.sqrt(period))

    def beat(p: float, q: float, r: float, s: float, tw: float) -> np.ndarray:
        return (
            wave(0.10, 0.020, p)
            + wave(0.23, 0.008, q)
            + wave(0.25, 0.010, r)
            + wave(0.27, 0.008, s)
            + wave(t_centre, 0.040, tw)
        )

    scale = float(rng.uniform(0.8, 1.2))
    leads = {
        "I": beat(0.08, -0.05, 0.8 * scale, -0.10, 0.20),
        "II": beat(0.12, -0.08, 1.2 * scale, -0.20, 0.30),
    }
    for k, name in enumerate(("V1", "V2", "V3", "V4", "V5", "V6")):
        leads[name] = beat(0.05, -0.1, (0.3 + 0.25 * k) * scale, -(1.0 - 0.15 * k), 0.1 + 0.05 * k)
    for k in range(leads_off):
        leads[f"V{k + 1}"] = np.zeros_like(t)
    noisy = {
        name: (signal + rng.normal(0.0, 0.005, signal.shape)).astype(np.float32)
        if np.any(signal)
        else signal.astype(np.float32)
        for name, signal in leads.items()
    }
    ecg = ECG(leads=noisy, sampling_rate=rate, source_format="synthetic")
    return ecg.complete_limb_leads().ordered()


def ecg_part10(
    rng: np.random.Generator,
    *,
    study_uid: str,
    patient: PatientInfo,
    acquired_at: datetime,
    hr: float,
    leads_off: int,
    institution: str,
    station: str,
) -> bytes:
    ecg = synthetic_ecg(rng, hr=hr, leads_off=leads_off)
    ecg.acquired_at = acquired_at.astimezone(SHANGHAI).replace(tzinfo=None)
    return ecg_to_part10_bytes(
        ecg, study_uid=study_uid, patient=patient, institution=institution, station_name=station
    )


def dx_part10(
    rng: np.random.Generator,
    *,
    study_uid: str,
    patient: PatientInfo,
    acquired_at: datetime,
    institution: str,
    size: int = 256,
) -> bytes:
    """A chest PA DX (16-bit container, 12 bits stored) of a patient, as a township DR sends it."""
    local = acquired_at.astimezone(SHANGHAI)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = DX_SOP_CLASS
    sop_uid = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = DX_SOP_CLASS
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = patient.name or ""
    ds.PatientID = patient.patient_id or ""
    ds.PatientSex = patient.sex or ""
    ds.PatientBirthDate = patient.birth_date or ""
    ds.StudyDate = ds.SeriesDate = local.strftime("%Y%m%d")
    ds.StudyTime = local.strftime("%H%M%S")
    ds.AccessionNumber = f"A{int(local.timestamp())}{int(rng.integers(100, 999))}"
    ds.Modality = "DX"
    ds.BodyPartExamined = "CHEST"
    ds.StudyDescription = "胸部正位"
    ds.InstitutionName = institution
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = size
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelSpacing = [0.5, 0.5]
    ds.ImagerPixelSpacing = [0.5, 0.5]
    yy, xx = np.mgrid[0:size, 0:size]
    lungs = np.exp(
        -(((xx - size * 0.33) / (size * 0.16)) ** 2 + ((yy - size * 0.5) / (size * 0.3)) ** 2)
    )
    lungs += np.exp(
        -(((xx - size * 0.67) / (size * 0.16)) ** 2 + ((yy - size * 0.5) / (size * 0.3)) ** 2)
    )
    image = 3000 - 1800 * lungs + rng.normal(0, 40, (size, size))
    ds.PixelData = np.clip(image, 0, 4095).astype(np.uint16).tobytes()
    out = DicomBytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()
