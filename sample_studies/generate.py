#!/usr/bin/env python
"""Write the generated sample studies (and copy the real ones) under ``sample_studies/``.

    python sample_studies/generate.py            # regenerate in place
    python sample_studies/generate.py --out DIR  # write elsewhere (the tests do this)

Everything generated is deterministic: the pictures and waveforms come from seeded NumPy
generators and the UIDs are name-based UUIDs (PS3.5 B.2, ``2.25.<uuid5>``), so running this again
gives the same instances — the same SOP Instance UIDs, so pushing twice is a duplicate send.

What is written (see README.md for the why):

* ``imaging/dx_chest_pa_wang_xiaodong_gb18030.dcm`` — Digital X-Ray Image Storage - For
  Presentation, chest PA, 2048×2048, 12 bits stored, JPEG 2000 Lossless; patient 王小东 in
  ``GB18030``.
* ``imaging/dx_chest_pa_li_xiuying_iso2022_ir58.dcm`` — the same kind of image (another seed,
  14 bits stored, JPEG 2000 Lossless); patient 李秀英 with ``\\ISO 2022 IR 58`` text whose escape
  sequences are written byte by byte as a Chinese DR sends them (pydicom 3.0 decodes these badly).
* ``ecg/ecg_12lead_zhang_wei_gb18030.dcm`` — 12-lead ECG Waveform Storage, 10 s at 500 Hz, one
  multiplex group of 12 SS channels; patient 张伟 in ``GB18030``.
* ``imaging/RG1_J2KR_cr_chest.dcm`` and ``ecg/waveform_ecg.dcm`` — real files copied unchanged
  from the installed ``pydicom-data`` and ``pydicom`` wheels (no download).

Every file is either uncompressed or JPEG 2000 Lossless, so dcmtk's ``storescu -xv`` sends the
whole folder in one go (storescu cannot transcode JPEG 2000, and proposes it only with ``-xv``).

Only NumPy and pydicom (+ pylibjpeg-openjpeg for the JPEG 2000 encoder) are needed.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
)

HERE = Path(__file__).resolve().parent

DX_FOR_PRESENTATION = UID("1.2.840.10008.5.1.4.1.1.1.1")
TWELVE_LEAD_ECG = UID("1.2.840.10008.5.1.4.1.1.9.1.1")

# Name-based UIDs: one namespace for this project's samples, one name per object.
_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://remote-dx.invalid/sample_studies")


def sample_uid(name: str) -> UID:
    """A UUID-derived UID (PS3.5 B.2) that is the same on every run for ``name``."""
    return UID(f"2.25.{uuid.uuid5(_UID_NAMESPACE, name).int}")


# ---------------------------------------------------------------------------------------------
# Text in the two Chinese character sets
# ---------------------------------------------------------------------------------------------

_ESC_GB2312_G1 = b"\x1b$)A"  # ISO 2022 designation of GB2312 into G1 (PS3.3 Table C.12-4)


def iso2022_ir58(text: str) -> bytes:
    """Encode ``text`` as a Chinese modality does under ``\\ISO 2022 IR 58``.

    ASCII stays in G0; each run of Chinese characters is GB2312 in G1 (high bit set) preceded by
    ``ESC $ ) A``. The designation is repeated after every ``^``/``=`` delimiter, because PS3.5
    §6.1.2.5.3 resets the code state at each person-name component (see PS3.5 Annex K's
    ``Wang^XiaoDong=王^小东=`` example).
    """
    out = bytearray()
    designated = False
    for char in text:
        if ord(char) < 0x80:
            out += char.encode("ascii")
            if char in "^=\\":
                designated = False
            continue
        if not designated:
            out += _ESC_GB2312_G1
            designated = True
        out += char.encode("gb2312")
    if len(out) % 2:
        out += b" "
    return bytes(out)


def set_raw(ds: Dataset, keyword_tag: int, vr: str, raw: bytes) -> None:
    """Put already-encoded bytes in ``ds`` so pydicom writes them untouched."""
    ds.add(DataElement(keyword_tag, vr, raw))


# ---------------------------------------------------------------------------------------------
# A procedural chest radiograph
# ---------------------------------------------------------------------------------------------


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur by FFT (NumPy only; the image is periodic-padded, edges are dark anyway)."""
    rows, cols = image.shape
    fy = np.fft.fftfreq(rows)[:, None]
    fx = np.fft.rfftfreq(cols)[None, :]
    kernel = np.exp(-2.0 * (np.pi * sigma) ** 2 * (fx**2 + fy**2))
    return np.fft.irfft2(np.fft.rfft2(image) * kernel, s=image.shape)


def _ellipse(
    u: np.ndarray, v: np.ndarray, cu: float, cv: float, au: float, av: float, power: float = 2.0
) -> np.ndarray:
    """Normalised (super)elliptic radius: < 1 inside, 1 on the border."""
    return (np.abs((u - cu) / au) ** power + np.abs((v - cv) / av) ** power) ** (1.0 / power)


def _rotated(u: np.ndarray, v: np.ndarray, cu: float, cv: float, degrees: float) -> tuple:
    """Coordinates rotated by ``degrees`` about (cu, cv), for tilted shapes."""
    a = np.radians(degrees)
    du, dv = u - cu, v - cv
    return cu + du * np.cos(a) + dv * np.sin(a), cv - du * np.sin(a) + dv * np.cos(a)


def _inside(radius: np.ndarray, edge: float) -> np.ndarray:
    """Soft indicator of ``radius < 1`` with an edge ``edge`` wide (logistic)."""
    return 1.0 / (1.0 + np.exp(np.clip((radius - 1.0) / edge, -60.0, 60.0)))


def _vessel_tree(
    rng: np.random.Generator, size: int, hilum: tuple[float, float], heading: float
) -> np.ndarray:
    """Pulmonary vessels as a branching tree drawn from a hilum: each segment forks into two
    thinner, shorter ones (about 25° apart) until they are too fine to see."""
    image = np.zeros((3, size, size))  # trunks, branches, twigs: drawn then blurred differently
    stack = [(hilum[0], hilum[1], heading + rng.normal(0, 0.3), 0.14, 1.0, 0)]
    while stack:
        x, y, angle, length, weight, depth = stack.pop()
        steps = max(int(length * size), 2)
        # A slightly curving course: the heading drifts along the segment.
        course = angle + np.cumsum(rng.normal(0.0, 0.02, steps))
        xs = x + np.cumsum(np.cos(course)) * length / steps
        ys = y + np.sin(course).cumsum() * length / steps
        cols = np.clip(((xs + 1.0) / 2.0 * (size - 1)).astype(int), 0, size - 1)
        rows = np.clip(((ys + 1.0) / 2.0 * (size - 1)).astype(int), 0, size - 1)
        np.add.at(image[min(depth // 2, 2)], (rows, cols), weight)
        if depth < 7:
            end_x, end_y = float(xs[-1]), float(ys[-1])
            for turn in (-1.0, 1.0):
                stack.append(
                    (
                        end_x,
                        end_y,
                        float(course[-1]) + turn * rng.uniform(0.2, 0.5),
                        length * rng.uniform(0.68, 0.82),
                        weight * 0.72,
                        depth + 1,
                    )
                )
    return image


def chest_radiograph(size: int, bits_stored: int, seed: int) -> np.ndarray:
    """A chest PA radiograph as a DR presents it: MONOCHROME2, bone bright, lungs dark.

    Built in units of "attenuation" and mapped to the stored range at the end: an elliptic trunk
    whose brightness follows its thickness, two lungs with diaphragm domes, costophrenic angles
    and vessel trees from the hila, heart and mediastinum (no air, so brighter), aortic knob, a
    faint spine, posterior and anterior ribs, clavicles, liver and gastric air bubble below the
    domes, detector blur and quantum noise. ``seed`` varies the anatomy a little and the noise.
    """
    rng = np.random.default_rng(seed)

    def jitter(scale: float) -> float:
        return float(rng.normal(0.0, scale))

    axis = np.linspace(-1.0, 1.0, size, dtype=np.float64)
    u, v = np.meshgrid(axis, axis)  # u: towards the patient's left (image right); v: towards feet

    # Trunk: brightness follows the thickness of an elliptic cylinder; neck and arms at the edges.
    trunk_r = _ellipse(u, v, 0.0, 0.3 + jitter(0.01), 0.86 + jitter(0.01), 1.25, 2.6)
    thickness = np.sqrt(np.clip(1.0 - np.minimum(trunk_r, 1.0) ** 2, 0.0, 1.0))
    trunk = _inside(trunk_r, 0.01)
    shoulders = _inside(_ellipse(u, v, 0.0, -0.62, 0.95, 0.3), 0.06)
    neck = _inside(_ellipse(u, v, 0.0, -1.0, 0.19, 0.4), 0.05)
    att = 0.35 * np.maximum(trunk * (0.35 + 0.65 * thickness), 0.5 * shoulders) + 0.1 * neck
    for side in (-1.0, 1.0):
        att += 0.28 * _inside(_ellipse(u, v, side * 0.99, 0.15, 0.09, 1.0), 0.04)

    # Heart (bulging to the patient's left) and mediastinum hold no air.
    hu, hv = _rotated(u, v, 0.08 + jitter(0.01), 0.30, 30.0)
    heart = _inside(_ellipse(hu, hv, 0.08, 0.30, 0.29, 0.19), 0.03)
    mediastinum = _inside(np.abs(u - 0.01) / (0.11 + 0.04 * np.clip(v + 0.3, 0.0, 1.0)), 0.05)
    mediastinum *= 1.0 / (1.0 + np.exp(np.clip((v - 0.45) / 0.03, -60.0, 60.0)))
    knob = _inside(_ellipse(u, v, 0.10, -0.25, 0.07, 0.055), 0.08)
    solid = np.maximum(np.maximum(heart, mediastinum), knob)

    # Lungs (the patient's right lung is on the image's left: PA, viewed facing the patient).
    # Each lung is an ellipse cut by its hemidiaphragm, a dome highest mid-lung and falling
    # steeply to the costophrenic angle; the right dome sits higher (the liver below it).
    lungs = np.zeros_like(u)
    domes = []
    for cu, au, top, dome_mid in (
        (-0.37 + jitter(0.01), 0.30, 0.36 + jitter(0.01), -0.40),
        (0.36 + jitter(0.01), 0.28, 0.42 + jitter(0.01), 0.38),
    ):
        dome = top + 1.6 * (u - dome_mid) ** 2
        domes.append(dome)
        lung = _inside(_ellipse(u, v, cu, -0.02, au, 0.70), 0.03)
        lung *= 1.0 / (1.0 + np.exp(np.clip((v - dome) / 0.01, -60.0, 60.0)))
        lungs = np.maximum(lungs, lung)
    lungs *= 1.0 - solid
    # More air laterally and towards the bases, so darker there.
    air = 0.8 + 0.2 * np.clip((np.abs(u) - 0.1) / 0.5, 0.0, 1.0) + 0.12 * v
    att -= 0.30 * lungs * air

    # Below the domes: the liver on the right, the gastric air bubble on the left.
    below = 1.0 / (1.0 + np.exp(np.clip((np.minimum(*domes) - v) / 0.02, -60.0, 60.0)))
    att += 0.05 * below * trunk * _inside(_ellipse(u, v, -0.35, 0.75, 0.55, 0.35), 0.1)
    bubble = _inside(_ellipse(u, v, 0.36, domes[1] + 0.09, 0.11, 0.06), 0.15)
    att -= 0.07 * bubble * trunk

    # Vessels branching out of the hila, visible against the air, thinning to the periphery.
    drawn = np.zeros((3, size, size))
    for hilum, headings in (
        ((-0.16, -0.02), (np.pi * 0.6, np.pi * 0.85, np.pi * 1.1, np.pi * 1.3, np.pi * 1.5)),
        ((0.18, 0.0), (np.pi * 0.4, np.pi * 0.15, np.pi * 1.9, np.pi * 1.7, np.pi * 1.5)),
    ):
        for heading in headings:
            drawn += _vessel_tree(rng, size, hilum, heading)
    # Blurring a drawn line by σ spreads it to a vessel about 2σ wide; the area-preserving blur
    # is scaled back by σ so thick and thin vessels have comparable contrast.
    vessels = sum(
        _blur(layer, sigma) * sigma for layer, sigma in zip(drawn, (7.0, 4.0, 2.2), strict=True)
    )
    vessels /= np.percentile(vessels, 99.8)
    hila = np.zeros_like(u)
    for cu in (-0.17, 0.19):
        hila = np.maximum(hila, np.exp(-(((u - cu) / 0.12) ** 2 + ((v + 0.02) / 0.18) ** 2)))
    att += lungs * (0.05 * hila + 0.08 * np.clip(vessels, 0.0, 1.5))

    # Spine: faint through the mediastinum, vertebral bodies with darker discs and pedicles.
    spine = _inside(np.abs(u) / 0.07, 0.06) * trunk
    disc = np.cos(np.pi * ((v + 1.0) / 0.115 % 1.0)) ** 16
    att += 0.035 * spine * (1.0 - 0.4 * disc)
    for side in (-1.0, 1.0):
        pedicle = _inside(_ellipse(u, (v + 1.0) % 0.115, side * 0.045, 0.057, 0.013, 0.02), 0.2)
        att += 0.015 * pedicle * trunk

    # Ribs: posterior arcs leave the spine, rise a little and sweep down laterally; the
    # anterior parts return medially and downwards, fainter; together they cross as on a film.
    rib = np.zeros_like(u)
    for side in (-1.0, 1.0):
        lateral = np.clip(side * u - 0.06, 0.0, None)
        for i in range(10):
            y0 = -0.74 + 0.12 * i + jitter(0.004)
            reach = 0.78 - 0.012 * i
            centre = y0 - 0.12 * lateral + 0.60 * lateral**2 + 0.30 * lateral**3
            width = 0.017 + 0.007 * i / 9
            dist = np.abs(v - centre) / width
            cortex = np.exp(-(((dist - 1.0) / 0.2) ** 2))
            posterior = (lateral < reach) * (side * u > 0.05)
            rib += posterior * (0.5 * _inside(dist, 0.15) + 0.5 * cortex)
            end = y0 - 0.12 * reach + 0.60 * reach**2 + 0.30 * reach**3
            front = end + 0.05 + 0.55 * (reach - lateral)
            anterior = (lateral < reach) * _inside(0.3 / np.maximum(lateral, 1e-3), 0.1) * (i < 7)
            rib += 0.45 * anterior * _inside(np.abs(v - front) / (width * 1.3), 0.25)
    att += 0.07 * rib * trunk * (0.4 + 0.6 * lungs)

    # Clavicles: from the sternal notch out and slightly up to the shoulders, gently S-shaped.
    for side in (-1.0, 1.0):
        t = np.clip((side * u - 0.07) / 0.5, 0.0, 1.0)
        centre = -0.62 - 0.08 * t + 0.04 * np.sin(np.pi * t)
        extent = (side * u > 0.07) * (side * u < 0.57)
        att += 0.09 * _inside(np.abs(v - centre) / (0.028 - 0.006 * t), 0.12) * extent

    # Detector: blur (light spread, scatter), then quantum noise growing with the signal.
    att = _blur(att, 2.0) + 0.05 * _blur(att, 40.0)
    top = float(2**bits_stored - 1)
    lo, hi = np.percentile(att, [0.5, 99.9])
    scaled = 0.04 + 0.9 * np.clip((att - lo) / (hi - lo), 0.0, 1.0)
    scaled += rng.normal(0.0, 1.0, u.shape) * (0.003 + 0.005 * np.sqrt(scaled))
    return np.clip(np.rint(scaled * top), 0, top).astype(np.uint16)


@dataclass(frozen=True)
class Patient:
    patient_id: str
    name: str  # DICOM PN: Alphabetic=Ideographic (=Phonetic)
    birth_date: str
    sex: str
    age: str


def _file_meta(sop_class: UID, sop_instance: UID) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta


def _code(value: str, scheme: str, meaning: str, version: str | None = None) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    if version:
        item.CodingSchemeVersion = version
    item.CodeMeaning = meaning
    return item


def _common(
    ds: Dataset,
    key: str,
    patient: Patient,
    modality: str,
    date: str,
    time: str,
    accession: str,
) -> None:
    """Patient, General Study/Series/Equipment and SOP Common attributes (PS3.3 C.7, C.12.1)."""
    ds.InstanceCreationDate = date
    ds.InstanceCreationTime = time
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = time
    ds.AcquisitionDateTime = date + time
    ds.AccessionNumber = accession
    ds.Modality = modality
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    ds.PatientAge = patient.age
    ds.ReferringPhysicianName = ""
    ds.StudyInstanceUID = sample_uid(f"{key}/study")
    ds.SeriesInstanceUID = sample_uid(f"{key}/series")
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.TimezoneOffsetFromUTC = "+0800"


# ---------------------------------------------------------------------------------------------
# DX
# ---------------------------------------------------------------------------------------------

DX_SIZE = 2048
DX_SPACING_MM = 0.2  # 2048 × 0.2 mm ≈ a 41 cm detector, typical of a township DR


def chest_dx(
    key: str,
    patient: Patient,
    *,
    seed: int,
    bits_stored: int,
    institution: str,
    station: str,
    date: str,
    time: str,
    charset: str,
) -> Dataset:
    """A Digital X-Ray Image - For Presentation (PS3.3 A.26), chest PA, in ``charset``.

    ``charset`` is ``"GB18030"`` (text given as str, pydicom encodes it) or ``"ISO 2022 IR 58"``
    (text encoded here by :func:`iso2022_ir58` and stored as raw bytes).
    """
    sop_instance = sample_uid(f"{key}/instance")
    ds = Dataset()
    ds.file_meta = _file_meta(DX_FOR_PRESENTATION, sop_instance)
    ds.SpecificCharacterSet = ["", "ISO 2022 IR 58"] if charset == "ISO 2022 IR 58" else charset
    ds.ImageType = ["ORIGINAL", "PRIMARY", ""]
    ds.SOPClassUID = DX_FOR_PRESENTATION
    ds.SOPInstanceUID = sop_instance
    _common(ds, key, patient, "DX", date, time, f"XP{date}{seed:04d}"[:16])
    ds.Manufacturer = "RemoteDx Sample Generator"
    ds.ManufacturerModelName = "Procedural DR"
    ds.DeviceSerialNumber = f"SIM-{seed:04d}"
    ds.SoftwareVersions = "remote_dx sample_studies/generate.py"
    ds.StationName = station
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.PatientOrientation = ["L", "F"]
    ds.ImageLaterality = "U"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.AnatomicRegionSequence = [_code("51185008", "SCT", "Chest")]
    ds.ViewCodeSequence = [_code("399348003", "SCT", "postero-anterior")]
    ds.AcquisitionContextSequence = []
    ds.PositionerType = "NONE"
    ds.DetectorType = "SCINTILLATOR"
    ds.DetectorConfiguration = "AREA"
    ds.KVP = "120"
    ds.ExposureTime = "8"
    ds.XRayTubeCurrent = "250"
    ds.ExposureInuAs = 2000
    ds.DistanceSourceToDetector = "1800"
    ds.DistanceSourceToPatient = "1650"
    ds.EstimatedRadiographicMagnificationFactor = "1.09"
    ds.ImagerPixelSpacing = [f"{DX_SPACING_MM}", f"{DX_SPACING_MM}"]
    # Pixel Spacing at the patient: corrected for the geometric magnification (PS3.3 10.7.1.3).
    patient_spacing = f"{DX_SPACING_MM / 1.09:.6f}"
    ds.PixelSpacing = [patient_spacing, patient_spacing]
    ds.PixelSpacingCalibrationType = "GEOMETRY"
    ds.FieldOfViewShape = "RECTANGLE"
    fov = round(DX_SIZE * DX_SPACING_MM)
    ds.FieldOfViewDimensions = [fov, fov]

    pixels = chest_radiograph(DX_SIZE, bits_stored, seed)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = 1
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "US"
    ds.PresentationLUTShape = "IDENTITY"
    ds.LossyImageCompression = "00"
    ds.BurnedInAnnotation = "NO"
    top = 2**bits_stored
    ds.WindowCenter = f"{top // 2}"
    ds.WindowWidth = f"{int(top * 0.9)}"
    ds.WindowCenterWidthExplanation = "STANDARD"
    ds.PixelData = pixels.tobytes()

    texts = {
        0x00100010: ("PN", patient.name),
        0x00080080: ("LO", institution),
        0x00081030: ("LO", "胸部正位 DR"),
        0x0008103E: ("LO", "胸部 PA"),
        0x00081010: ("SH", station),
    }
    for tag, (vr, text) in texts.items():
        if charset == "ISO 2022 IR 58":
            set_raw(ds, tag, vr, iso2022_ir58(text))
        else:
            ds.add(DataElement(tag, vr, text))
    return ds


# ---------------------------------------------------------------------------------------------
# 12-lead ECG
# ---------------------------------------------------------------------------------------------

ECG_RATE = 500  # Hz
ECG_SECONDS = 10
ECG_SENSITIVITY_UV = 2.5  # µV per stored unit, as many carts use

# SCP-ECG lead codes (PS3.16 CID 3001) in the conventional order.
LEADS = (
    ("5.6.3-9-1", "Lead I (Einthoven)"),
    ("5.6.3-9-2", "Lead II"),
    ("5.6.3-9-61", "Lead III"),
    ("5.6.3-9-62", "Lead aVR"),
    ("5.6.3-9-63", "Lead aVL"),
    ("5.6.3-9-64", "Lead aVF"),
    ("5.6.3-9-3", "Lead V1"),
    ("5.6.3-9-4", "Lead V2"),
    ("5.6.3-9-5", "Lead V3"),
    ("5.6.3-9-6", "Lead V4"),
    ("5.6.3-9-7", "Lead V5"),
    ("5.6.3-9-8", "Lead V6"),
)

# Waves of one beat as Gaussians in time around the R peak, each with a heart-vector direction
# (x: towards the patient's left, y: towards the feet, z: anterior) in mV. Projecting one
# 3-D dipole onto the leads keeps the twelve leads consistent with each other (Einthoven's
# III = II − I, aVR = −(I + II)/2, …), with septal q waves, R-wave progression V1→V6 and
# concordant T waves as in a normal adult ECG.
_WAVES = (
    # name, offset s, width s, (x, y, z) mV
    ("P", -0.165, 0.022, (0.07, 0.10, 0.02)),
    ("q", -0.024, 0.007, (-0.10, -0.02, 0.18)),
    ("R", 0.000, 0.011, (1.15, 0.90, -0.25)),
    ("S", 0.022, 0.008, (-0.35, -0.20, -0.30)),
    ("T", 0.240, 0.040, (0.24, 0.22, 0.10)),
    ("T2", 0.205, 0.032, (0.05, 0.05, 0.12)),
)
# Precordial leads: direction in the horizontal plane, angle from the patient's left towards
# anterior; they see a larger potential than the limb leads.
_PRECORDIAL_DEG = (115.0, 95.0, 75.0, 58.0, 30.0, 0.0)
_PRECORDIAL_GAIN = 1.35


def twelve_lead_ecg(seed: int, rate: int = ECG_RATE, seconds: int = ECG_SECONDS) -> np.ndarray:
    """Twelve leads in mV, shape (samples, 12), in the order of :data:`LEADS`: sinus rhythm
    ~72/min with respiratory sinus arrhythmia, baseline wander, 50 Hz mains hum (China) and a
    little muscle noise."""
    rng = np.random.default_rng(seed)
    n = rate * seconds
    t = np.arange(n) / rate

    beats = []
    beat_time = 0.35 + rng.uniform(0.0, 0.2)
    while beat_time < seconds + 0.5:
        beats.append(beat_time)
        rr = 0.83 + 0.04 * np.sin(2 * np.pi * beat_time / 4.2) + rng.normal(0.0, 0.012)
        beat_time += rr

    dipole = np.zeros((n, 3))
    for beat in beats:
        scale = 1.0 + rng.normal(0.0, 0.02)
        for _name, offset, width, vector in _WAVES:
            shape = np.exp(-0.5 * ((t - beat - offset) / width) ** 2)
            dipole += scale * shape[:, None] * np.asarray(vector)[None, :]

    x, y, z = dipole[:, 0], dipole[:, 1], dipole[:, 2]
    precordial_dirs = np.radians(np.asarray(_PRECORDIAL_DEG))
    # Eight recorded leads — I, II and V1–V6 — each with its own artefacts: baseline wander
    # (breathing, electrode drift), 50 Hz mains hum (China) and muscle noise.
    recorded = np.stack(
        [x, 0.5 * x + (np.sqrt(3.0) / 2.0) * y]
        + [_PRECORDIAL_GAIN * (np.cos(a) * x + np.sin(a) * z + 0.15 * y) for a in precordial_dirs],
        axis=1,
    )
    phases = rng.uniform(0.0, 2.0 * np.pi, (2, recorded.shape[1]))
    recorded += 0.06 * np.sin(2.0 * np.pi * 0.25 * t[:, None] + phases[0])
    recorded += 0.008 * np.sin(2.0 * np.pi * 50.0 * t[:, None] + phases[1])
    recorded += rng.normal(0.0, 0.008, recorded.shape)
    # The other four limb leads are derived as an ECG cart does (Einthoven/Goldberger), so
    # III = II − I, aVR = −(I + II)/2, aVL = I − II/2 and aVF = II − I/2 hold exactly.
    lead_i, lead_ii = recorded[:, 0], recorded[:, 1]
    derived = np.stack(
        [
            lead_ii - lead_i,
            -(lead_i + lead_ii) / 2.0,
            lead_i - lead_ii / 2.0,
            lead_ii - lead_i / 2.0,
        ],
        axis=1,
    )
    return np.concatenate([recorded[:, :2], derived, recorded[:, 2:]], axis=1)


def ecg_12lead(
    key: str,
    patient: Patient,
    *,
    seed: int,
    institution: str,
    station: str,
    date: str,
    time: str,
) -> Dataset:
    """A 12-lead ECG Waveform Storage instance (PS3.3 A.34.3): one multiplex group "RHYTHM"
    of 12 channels × 5000 samples, SS 16-bit, sensitivity in µV (PS3.3 C.10.9)."""
    sop_instance = sample_uid(f"{key}/instance")
    ds = Dataset()
    ds.file_meta = _file_meta(TWELVE_LEAD_ECG, sop_instance)
    ds.SpecificCharacterSet = "GB18030"
    ds.SOPClassUID = TWELVE_LEAD_ECG
    ds.SOPInstanceUID = sop_instance
    _common(ds, key, patient, "ECG", date, time, f"XE{date}{seed:04d}"[:16])
    ds.Manufacturer = "RemoteDx Sample Generator"
    ds.ManufacturerModelName = "Procedural 12-lead"
    ds.DeviceSerialNumber = f"SIM-{seed:04d}"
    ds.SoftwareVersions = "remote_dx sample_studies/generate.py"
    ds.PatientName = patient.name
    ds.InstitutionName = institution
    ds.StationName = station
    ds.StudyDescription = "常规十二导联心电图"
    ds.SeriesDescription = "静息心电图"
    ds.AcquisitionContextSequence = []

    millivolts = twelve_lead_ecg(seed)
    counts = np.rint(millivolts * 1000.0 / ECG_SENSITIVITY_UV)
    samples = np.clip(counts, -32768, 32767).astype("<i2")

    group = Dataset()
    group.MultiplexGroupTimeOffset = "0"
    group.TriggerTimeOffset = "0"
    group.WaveformOriginality = "ORIGINAL"
    group.NumberOfWaveformChannels = samples.shape[1]
    group.NumberOfWaveformSamples = samples.shape[0]
    group.SamplingFrequency = str(ECG_RATE)
    group.MultiplexGroupLabel = "RHYTHM"
    channels = []
    for number, (code, meaning) in enumerate(LEADS, start=1):
        channel = Dataset()
        channel.WaveformChannelNumber = number
        channel.ChannelSourceSequence = [_code(code, "SCPECG", meaning, "1.3")]
        channel.ChannelSensitivity = str(ECG_SENSITIVITY_UV)
        channel.ChannelSensitivityUnitsSequence = [_code("uV", "UCUM", "microvolt", "1.4")]
        channel.ChannelSensitivityCorrectionFactor = "1"
        channel.ChannelBaseline = "0"
        channel.ChannelTimeSkew = "0"
        channel.WaveformBitsStored = 16
        channel.FilterLowFrequency = "0.05"
        channel.FilterHighFrequency = "150"
        channel.NotchFilterFrequency = "50"
        channels.append(channel)
    group.ChannelDefinitionSequence = channels
    group.WaveformBitsAllocated = 16
    group.WaveformSampleInterpretation = "SS"
    # Samples are interleaved by channel within each time point (PS3.3 C.10.9.1.4.3).
    group.WaveformData = samples.tobytes()
    ds.WaveformSequence = [group]
    return ds


# ---------------------------------------------------------------------------------------------
# The sample set
# ---------------------------------------------------------------------------------------------

WANG = Patient("XP2025000123", "Wang^XiaoDong=王^小东", "19620418", "M", "062Y")
LI = Patient("DH2025000456", "Li^XiuYing=李^秀英", "19581103", "F", "066Y")
ZHANG = Patient("XP2025000789", "Zhang^Wei=张^伟", "19670925", "M", "057Y")

# Real files copied from installed wheels: (package, path inside it, destination).
REAL_FILES = (
    ("data_store", "data/RG1_J2KR.dcm", "imaging/RG1_J2KR_cr_chest.dcm"),
    ("pydicom", "data/test_files/waveform_ecg.dcm", "ecg/waveform_ecg.dcm"),
)


def build_generated(only: str = "") -> dict[str, tuple[Dataset, UID]]:
    """Relative path → (dataset, transfer syntax to write it in), for paths containing ``only``."""
    builders = {
        "imaging/dx_chest_pa_wang_xiaodong_gb18030.dcm": _dx_wang,
        "imaging/dx_chest_pa_li_xiuying_iso2022_ir58.dcm": _dx_li,
        "ecg/ecg_12lead_zhang_wei_gb18030.dcm": _ecg_zhang,
    }
    return {path: build() for path, build in builders.items() if only in path}


def _dx_wang() -> tuple[Dataset, UID]:
    dx = chest_dx(
        "dx-chest-wang-xiaodong",
        WANG,
        seed=20250314,
        bits_stored=12,
        institution="西坪镇卫生院",
        station="西坪DR",
        date="20250314",
        time="093012",
        charset="GB18030",
    )
    return dx, JPEG2000Lossless


def _dx_li() -> tuple[Dataset, UID]:
    dx = chest_dx(
        "dx-chest-li-xiuying",
        LI,
        seed=20250317,
        bits_stored=14,
        institution="丁河镇卫生院",
        station="丁河DR",
        date="20250317",
        time="101545",
        charset="ISO 2022 IR 58",
    )
    return dx, JPEG2000Lossless


def _ecg_zhang() -> tuple[Dataset, UID]:
    ecg = ecg_12lead(
        "ecg-12lead-zhang-wei",
        ZHANG,
        seed=20250318,
        institution="西坪镇卫生院",
        station="西坪心电图机",
        date="20250318",
        time="081530",
    )
    return ecg, ExplicitVRLittleEndian


def write_generated(out: Path, only: str = "") -> list[Path]:
    """Write the generated instances whose path contains ``only`` (all when empty)."""
    written = []
    for relative, (ds, syntax) in build_generated(only).items():
        if syntax != ExplicitVRLittleEndian:
            # Lossless JPEG 2000 by pylibjpeg-openjpeg: a noisy 2048² 16-bit image shrinks to
            # about half, where RLE or deflate barely gain anything.
            ds.compress(syntax, encoding_plugin="pylibjpeg", generate_instance_uid=False)
        path = out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        written.append(path)
    return written


def copy_real(out: Path) -> list[Path]:
    """Copy the real files from the installed wheels; skip (with a note) what is not installed.

    Paths are resolved inside the package folders on purpose: ``pydicom.data.get_testdata_file``
    would try to download a file that is not installed.
    """
    written = []
    for package, inner, relative in REAL_FILES:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            print(f"skip {relative}: package {package!r} is not installed")
            continue
        source = Path(next(iter(spec.submodule_search_locations))) / inner
        if not source.is_file():
            print(f"skip {relative}: {source} not found")
            continue
        path = out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, path)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE, help="root to write into")
    parser.add_argument(
        "--no-real", action="store_true", help="only the generated files, no copies"
    )
    parser.add_argument(
        "--only", default="", help="only generated files whose path contains this text"
    )
    args = parser.parse_args(argv)
    paths = write_generated(args.out, args.only)
    if not args.no_real and not args.only:
        paths += copy_real(args.out)
    for path in paths:
        print(f"{path.stat().st_size / 1e6:7.2f} MB  {path}")


if __name__ == "__main__":
    main()
