"""The sample studies a new user pushes: valid DICOM, what the README says they are, and
reproducible by ``sample_studies/generate.py``."""

from __future__ import annotations

import hashlib
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import UID

from remote_dx.core.charset import decode_element
from remote_dx.ingest.instance import parse_part10
from tests.support import SAMPLE_STUDIES

DX_GB18030 = SAMPLE_STUDIES / "imaging" / "dx_chest_pa_wang_xiaodong_gb18030.dcm"
DX_IR58 = SAMPLE_STUDIES / "imaging" / "dx_chest_pa_li_xiuying_iso2022_ir58.dcm"
ECG = SAMPLE_STUDIES / "ecg" / "ecg_12lead_zhang_wei_gb18030.dcm"
GENERATED = (DX_GB18030, DX_IR58, ECG)
REAL = (
    SAMPLE_STUDIES / "imaging" / "RG1_J2KR_cr_chest.dcm",
    SAMPLE_STUDIES / "ecg" / "waveform_ecg.dcm",
)
DX_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"
ECG_CLASS = "1.2.840.10008.5.1.4.1.1.9.1.1"
UNCOMPRESSED_OR_J2K = {
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.4.90",
}


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sample_generate", SAMPLE_STUDIES / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


def _all_samples() -> list[Path]:
    return sorted(SAMPLE_STUDIES.rglob("*.dcm"))


def test_the_expected_samples_are_there() -> None:
    assert set(_all_samples()) == {*GENERATED, *REAL}
    total = sum(p.stat().st_size for p in SAMPLE_STUDIES.rglob("*") if p.is_file())
    assert total < 15e6, f"sample_studies/ is {total / 1e6:.1f} MB; keep it small"


@pytest.mark.parametrize("path", _all_samples(), ids=lambda p: p.name)
def test_sample_is_a_valid_instance(path: Path) -> None:
    data = path.read_bytes()
    ds = parse_part10(data)  # the hub's own acceptance check
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        uid = UID(str(ds[keyword].value))
        assert uid.is_valid, f"{keyword} {uid} is not a valid UID"
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
    # One `storescu -xv` can send the lot (dcmtk cannot transcode anything else we might use).
    assert ds.file_meta.TransferSyntaxUID in UNCOMPRESSED_OR_J2K


def test_sop_instance_uids_are_unique() -> None:
    uids = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in _all_samples()]
    assert len(uids) == len(set(uids))


def test_readme_describes_every_sample() -> None:
    readme = (SAMPLE_STUDIES / "README.md").read_text(encoding="utf-8")
    for path in _all_samples():
        assert path.relative_to(SAMPLE_STUDIES).as_posix() in readme


@pytest.mark.parametrize("path", (DX_GB18030, DX_IR58), ids=lambda p: p.name)
def test_generated_dx_is_a_chest_pa_at_full_size(path: Path) -> None:
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == DX_CLASS
    assert ds.Modality == "DX"
    assert ds.PresentationIntentType == "FOR PRESENTATION"
    assert (ds.Rows, ds.Columns) == (2048, 2048)
    assert ds.BitsAllocated == 16
    assert ds.BitsStored in (12, 14)
    assert ds.HighBit == ds.BitsStored - 1
    assert ds.BodyPartExamined == "CHEST"
    assert ds.ViewPosition == "PA"
    assert len(ds.PixelSpacing) == 2 and len(ds.ImagerPixelSpacing) == 2
    assert float(ds.PixelSpacing[0]) <= float(ds.ImagerPixelSpacing[0])
    assert float(ds.WindowWidth) > 0
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.90"  # JPEG 2000 Lossless

    pixels = ds.pixel_array
    assert pixels.shape == (2048, 2048)
    assert pixels.dtype == np.uint16
    assert int(pixels.max()) < 2**ds.BitsStored
    # Chest-like: the lung fields (either side, mid-height) are darker than the mediastinum
    # and spine between them, and the image is not flat.
    lung_right = pixels[700:1000, 350:600].mean()  # the patient's right: the image's left
    lung_left = pixels[700:1000, 1450:1700].mean()
    midline = pixels[700:1000, 980:1070].mean()
    assert midline > 1.5 * max(lung_right, lung_left)
    assert pixels.std() > 0.1 * 2**ds.BitsStored


def test_generated_dx_gb18030_name() -> None:
    ds = pydicom.dcmread(DX_GB18030, stop_before_pixels=True)
    assert ds.SpecificCharacterSet == "GB18030"
    assert decode_element(ds, "PatientName") == "Wang^XiaoDong=王^小东"
    assert decode_element(ds, "InstitutionName") == "西坪镇卫生院"
    assert decode_element(ds, "StudyDescription") == "胸部正位 DR"


def test_generated_dx_iso2022_ir58_name() -> None:
    ds = pydicom.dcmread(DX_IR58, stop_before_pixels=True)
    assert list(ds.SpecificCharacterSet) == ["", "ISO 2022 IR 58"]
    raw = ds.get_item(0x00100010).value
    # As a Chinese DR writes it: ASCII, then ESC $ ) A before each GB2312 component.
    assert raw.rstrip(b" ") == (
        b"Li^XiuYing=\x1b$)A" + "李".encode("gb2312") + b"^\x1b$)A" + "秀英".encode("gb2312")
    )
    assert decode_element(ds, "PatientName") == "Li^XiuYing=李^秀英"
    assert decode_element(ds, "InstitutionName") == "丁河镇卫生院"
    assert decode_element(ds, "StudyDescription") == "胸部正位 DR"


def _leads(ds: Dataset) -> list[str]:
    group = ds.WaveformSequence[0]
    return [c.ChannelSourceSequence[0].CodeMeaning for c in group.ChannelDefinitionSequence]


def test_generated_ecg_is_12_leads_10_s_at_500_hz() -> None:
    ds = pydicom.dcmread(ECG)
    assert ds.SOPClassUID == ECG_CLASS
    assert ds.Modality == "ECG"
    assert len(ds.WaveformSequence) == 1
    group = ds.WaveformSequence[0]
    assert group.NumberOfWaveformChannels == 12
    assert group.NumberOfWaveformSamples == 5000
    assert float(group.SamplingFrequency) == 500.0
    assert group.WaveformBitsAllocated == 16
    assert group.WaveformSampleInterpretation == "SS"
    assert _leads(ds)[:2] == ["Lead I (Einthoven)", "Lead II"]
    assert _leads(ds)[6:] == [f"Lead V{i}" for i in range(1, 7)]
    for channel in group.ChannelDefinitionSequence:
        assert channel.ChannelSensitivityUnitsSequence[0].CodeValue == "uV"
        assert channel.ChannelSourceSequence[0].CodingSchemeDesignator == "SCPECG"

    mv = ds.waveform_array(0) / 1000.0  # pydicom applies the sensitivity: µV → mV
    assert mv.shape == (5000, 12)
    lead_i, lead_ii, lead_iii = mv[:, 0], mv[:, 1], mv[:, 2]
    # III, aVR, aVL, aVF are derived from I and II as a cart does: exact up to the rounding to
    # 2.5 µV units.
    assert np.abs(lead_iii - (lead_ii - lead_i)).max() <= 0.004
    assert np.abs(mv[:, 3] + (lead_i + lead_ii) / 2).max() <= 0.004
    # A plausible adult ECG: R peaks of 0.5–3 mV in II and V5, 8–15 beats in 10 s.
    assert 0.5 < lead_ii.max() < 3.0
    assert 0.5 < mv[:, 10].max() < 3.5
    peaks = np.flatnonzero((lead_ii[1:-1] > 0.6 * lead_ii.max()) & (np.diff(lead_ii)[:-1] > 0))
    beats = 1 + int(np.sum(np.diff(peaks) > 100))  # samples > 0.2 s apart start a new beat
    assert 8 <= beats <= 15
    assert decode_element(ds, "PatientName") == "Zhang^Wei=张^伟"
    assert decode_element(ds, "InstitutionName") == "西坪镇卫生院"


def test_real_ecg_is_the_pydicom_12_lead() -> None:
    ds = pydicom.dcmread(SAMPLE_STUDIES / "ecg" / "waveform_ecg.dcm")
    assert ds.SOPClassUID == ECG_CLASS
    assert ds.waveform_array(0).shape[1] == 12


def test_real_files_match_the_installed_wheels() -> None:
    generate = _generator()
    for package, inner, relative in generate.REAL_FILES:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            pytest.skip(f"{package} is not installed")
        source = Path(next(iter(spec.submodule_search_locations))) / inner
        committed = SAMPLE_STUDIES / relative
        assert (
            hashlib.sha256(source.read_bytes()).digest()
            == hashlib.sha256(committed.read_bytes()).digest()
        ), f"{relative} differs from {source}"


@pytest.mark.slow
@pytest.mark.parametrize("committed", (DX_IR58, ECG), ids=lambda p: p.name)
def test_generator_is_deterministic(tmp_path: Path, committed: Path) -> None:
    """Regenerating gives the committed instances: same UIDs, same pixels and samples.

    One DX (the two share their code; each takes ~10 s to make) and the ECG.
    """
    run = subprocess.run(
        [
            sys.executable,
            str(SAMPLE_STUDIES / "generate.py"),
            "--out",
            str(tmp_path),
            "--only",
            committed.name,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert len(list(tmp_path.rglob("*.dcm"))) == 1
    fresh = tmp_path / committed.relative_to(SAMPLE_STUDIES)
    a, b = pydicom.dcmread(committed), pydicom.dcmread(fresh)
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "PatientID"):
        assert a[keyword].value == b[keyword].value
    assert a.get_item(0x00100010).value == b.get_item(0x00100010).value
    if "PixelData" in a:
        assert np.array_equal(a.pixel_array, b.pixel_array)
    else:
        assert a.WaveformSequence[0].WaveformData == b.WaveformSequence[0].WaveformData
