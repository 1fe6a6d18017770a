"""The ingest benchmark's corpus: DX radiographs, one CT series and 12-lead ECGs, made on demand.

Every file is generated deterministically from its index (pixel noise, waveform and UIDs are
seeded by it), written once into a cache directory and reused by later runs; a file is written to
a temporary name and renamed, so an interrupted run never leaves a half file in the cache. The
quick corpus is simply the first files of each kind.

- DX: Digital X-Ray Image Storage – For Presentation (PS3.3 A.26), 2048×2048, 16 bits allocated,
  14 stored, MONOCHROME2, ≈ 8 MB each; five images per study (one series).
- CT: CT Image Storage (PS3.3 A.3), one study of one axial series, 512×512 signed 16-bit slices.
- ECG: 12-Lead ECG Waveform Storage (PS3.3 A.34.3), 12 channels × 5000 samples at 500 Hz (10 s),
  SS; one study per ECG. The channel definitions are those of pydicom's ``waveform_ecg.dcm``.

All files are Explicit VR Little Endian (uncompressed), as township DR and ECG carts send them.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

DX_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image – For Presentation
CT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
ECG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.9.1.1"  # 12-lead ECG Waveform Storage

FULL_COUNTS = {"ecg": 500, "dx": 100, "ct": 200}
QUICK_COUNTS = {"ecg": 50, "dx": 10, "ct": 40}
KINDS = ("ecg", "dx", "ct")

DX_SIZE = 2048
DX_PER_STUDY = 5
CT_SIZE = 512
ECG_RATE = 500
ECG_SAMPLES = 5000
# Bump when the generated content changes, so an old cache is not reused.
CORPUS_VERSION = "1"


@dataclass(frozen=True)
class Corpus:
    kind: str
    files: list[Path]

    @property
    def count(self) -> int:
        return len(self.files)

    @property
    def total_bytes(self) -> int:
        return sum(path.stat().st_size for path in self.files)


def _uid(*parts: object) -> str:
    """A deterministic UID (2.25 form, PS3.5 B.2) derived from the parts."""
    return generate_uid(
        prefix=None, entropy_srcs=["remote_dx bench", CORPUS_VERSION, *map(str, parts)]
    )


def _base(sop_class: str, sop_uid: str, modality: str) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.Modality = modality
    ds.Manufacturer = "remote_dx bench"
    ds.InstitutionName = "西坪镇卫生院"
    ds.StationName = "XIPING"
    ds.ReferringPhysicianName = ""
    ds.AccessionNumber = ""
    return ds


def _patient(ds: Dataset, number: int) -> None:
    ds.PatientName = f"测试^患者{number:04d}"
    ds.PatientID = f"BENCH{number:05d}"
    ds.PatientBirthDate = f"19{40 + number % 60:02d}0101"
    ds.PatientSex = "MF"[number % 2]


def _study(ds: Dataset, kind: str, study: int, description: str) -> None:
    ds.StudyInstanceUID = _uid(kind, "study", study)
    ds.SeriesInstanceUID = _uid(kind, "series", study)
    ds.StudyDate = "20240301"
    ds.StudyTime = f"{8 + study % 10:02d}{study % 60:02d}00"
    ds.StudyID = str(study + 1)
    ds.StudyDescription = description
    ds.SeriesNumber = 1


def _image(ds: Dataset, pixels: np.ndarray, *, bits_stored: int, signed: bool) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.PixelData = pixels.astype("<i2" if signed else "<u2").tobytes()


_dx_background: np.ndarray | None = None


def _dx_pixels(index: int) -> np.ndarray:
    """A chest-like radiograph: bright mediastinum and edges, darker lung fields, noise."""
    global _dx_background
    if _dx_background is None:
        y, x = np.mgrid[0:DX_SIZE, 0:DX_SIZE].astype(np.float32) / DX_SIZE
        lungs = np.exp(-(((x - 0.3) / 0.14) ** 2 + ((y - 0.5) / 0.28) ** 2)) + np.exp(
            -(((x - 0.7) / 0.14) ** 2 + ((y - 0.5) / 0.28) ** 2)
        )
        _dx_background = 9000.0 + 5000.0 * y - 6000.0 * lungs
    rng = np.random.default_rng(index)
    noise = rng.integers(0, 400, size=(DX_SIZE, DX_SIZE), dtype=np.int32)
    return np.clip(_dx_background + noise + 30 * (index % 20), 0, 16383).astype(np.uint16)


def make_dx(index: int) -> Dataset:
    study = index // DX_PER_STUDY
    ds = _base(DX_SOP_CLASS, _uid("dx", "instance", index), "DX")
    _patient(ds, 1000 + study)
    _study(ds, "dx", study, "胸部正位 DR")
    ds.SeriesDescription = "Chest PA"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.InstanceNumber = index % DX_PER_STUDY + 1
    ds.ImagerPixelSpacing = [0.139, 0.139]
    ds.PixelSpacing = [0.139, 0.139]
    ds.WindowCenter = 8192
    ds.WindowWidth = 16384
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.PixelIntensityRelationship = "LIN"
    ds.PixelIntensityRelationshipSign = 1
    ds.PresentationLUTShape = "IDENTITY"
    _image(ds, _dx_pixels(index), bits_stored=14, signed=False)
    return ds


_ct_grid: tuple[np.ndarray, np.ndarray] | None = None


def _ct_pixels(index: int) -> np.ndarray:
    """An abdomen-like phantom in Hounsfield units (stored with intercept −1024), plus noise."""
    global _ct_grid
    if _ct_grid is None:
        y, x = np.mgrid[0:CT_SIZE, 0:CT_SIZE].astype(np.float32) / CT_SIZE - 0.5
        _ct_grid = (x, y)
    x, y = _ct_grid
    z = index / FULL_COUNTS["ct"]
    body = (x / 0.42) ** 2 + (y / 0.32) ** 2 < 1
    organ = ((x - 0.12) / 0.12) ** 2 + ((y + 0.05) / (0.08 + 0.05 * z)) ** 2 < 1
    spine = (x / 0.05) ** 2 + ((y - 0.2) / 0.05) ** 2 < 1
    hu = np.full(x.shape, -1000.0, dtype=np.float32)
    hu[body] = 40.0
    hu[organ] = 60.0
    hu[spine] = 700.0
    rng = np.random.default_rng(10_000 + index)
    hu += rng.normal(0, 12, size=hu.shape).astype(np.float32)
    return (hu + 1024).round().astype(np.int16)


def make_ct(index: int) -> Dataset:
    ds = _base(CT_SOP_CLASS, _uid("ct", "instance", index), "CT")
    _patient(ds, 900)
    _study(ds, "ct", 0, "腹部平扫 CT")
    ds.SeriesDescription = "Abdomen 1.25 mm"
    ds.BodyPartExamined = "ABDOMEN"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.InstanceNumber = index + 1
    ds.FrameOfReferenceUID = _uid("ct", "frame")
    ds.ImagePositionPatient = [-175.0, -175.0, round(-index * 1.25, 2)]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SliceLocation = round(-index * 1.25, 2)
    ds.SliceThickness = 1.25
    ds.PixelSpacing = [0.684, 0.684]
    ds.KVP = 120
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    ds.WindowCenter = 40
    ds.WindowWidth = 400
    _image(ds, _ct_pixels(index), bits_stored=16, signed=True)
    return ds


_ecg_template: Dataset | None = None


def _ecg_channels() -> Sequence:
    global _ecg_template
    if _ecg_template is None:
        _ecg_template = pydicom.dcmread(get_testdata_file("waveform_ecg.dcm"))
    channels = Sequence()
    for item in _ecg_template.WaveformSequence[0].ChannelDefinitionSequence:
        channel = Dataset()
        for element in item:
            channel.add(element)
        channel.FilterHighFrequency = 150
        channels.append(channel)
    return channels


# Lead I, II, III, aVR, aVL, aVF, V1–V6: relative R-wave amplitude (mV), a plausible normal axis.
_LEAD_GAIN = np.array([0.6, 1.1, 0.5, -0.85, 0.05, 0.8, -0.4, 0.2, 0.7, 1.1, 1.3, 1.0])


def _ecg_samples(index: int) -> np.ndarray:
    """Twelve leads of a synthetic sinus rhythm (P, QRS, T as Gaussians), in 1.25 µV units."""
    rng = np.random.default_rng(20_000 + index)
    t = np.arange(ECG_SAMPLES) / ECG_RATE
    rr = 60.0 / (55 + index % 50)
    phase = (t % rr) / rr
    beat = (
        0.12 * np.exp(-(((phase - 0.15) / 0.025) ** 2))
        - 0.1 * np.exp(-(((phase - 0.245) / 0.008) ** 2))
        + 1.0 * np.exp(-(((phase - 0.26) / 0.01) ** 2))
        - 0.2 * np.exp(-(((phase - 0.275) / 0.01) ** 2))
        + 0.3 * np.exp(-(((phase - 0.5) / 0.05) ** 2))
    )
    millivolts = np.outer(beat, _LEAD_GAIN) + rng.normal(0, 0.01, size=(ECG_SAMPLES, 12))
    return np.round(millivolts * 1000 / 1.25).astype("<i2")


def make_ecg(index: int) -> Dataset:
    ds = _base(ECG_SOP_CLASS, _uid("ecg", "instance", index), "ECG")
    _patient(ds, 3000 + index)
    _study(ds, "ecg", index, "常规十二导联心电图")
    ds.InstanceNumber = 1
    ds.ContentDate = ds.StudyDate
    ds.ContentTime = ds.StudyTime
    ds.AcquisitionDateTime = ds.StudyDate + ds.StudyTime
    group = Dataset()
    group.MultiplexGroupTimeOffset = 0
    group.WaveformOriginality = "ORIGINAL"
    group.NumberOfWaveformChannels = 12
    group.NumberOfWaveformSamples = ECG_SAMPLES
    group.SamplingFrequency = ECG_RATE
    group.MultiplexGroupLabel = "RHYTHM"
    group.ChannelDefinitionSequence = _ecg_channels()
    group.WaveformBitsAllocated = 16
    group.WaveformSampleInterpretation = "SS"
    group.WaveformData = _ecg_samples(index).tobytes()  # samples interleaved by channel
    ds.WaveformSequence = Sequence([group])
    return ds


MAKERS = {"dx": make_dx, "ct": make_ct, "ecg": make_ecg}


def default_cache() -> Path:
    return Path(__file__).resolve().parent / "out" / "corpus"


def ensure_corpus(kind: str, count: int, cache: Path | None = None) -> Corpus:
    """The first ``count`` files of ``kind``, generating the ones the cache lacks."""
    if kind not in MAKERS:
        raise ValueError(f"unknown corpus {kind!r}; choose from {', '.join(KINDS)}")
    folder = (cache or default_cache()) / f"v{CORPUS_VERSION}" / kind
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for index in range(count):
        path = folder / f"{kind}_{index:04d}.dcm"
        if not path.exists():
            ds = MAKERS[kind](index)
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
            os.close(fd)
            ds.save_as(tmp, enforce_file_format=True)
            os.replace(tmp, path)
        files.append(path)
    return Corpus(kind, files)


if __name__ == "__main__":  # pragma: no cover - manual use: python bench/corpus.py [--quick]
    import sys

    counts = QUICK_COUNTS if "--quick" in sys.argv else FULL_COUNTS
    for name in KINDS:
        corpus = ensure_corpus(name, counts[name])
        print(f"{name}: {corpus.count} files, {corpus.total_bytes / 1e6:.1f} MB")
