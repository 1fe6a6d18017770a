"""ECG → DICOM ECG waveform: every reader's output round-trips through a Part 10 file that pydicom
and dcmtk read, with the same samples (1 µV quantisation) and lead names."""

from __future__ import annotations

import io
import shutil
import subprocess

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from remote_dx.ecg.dicom_codes import AMBULATORY_ECG, GENERAL_ECG, TWELVE_LEAD_ECG
from remote_dx.ecg.dicom_writer import choose_sop_class, ecg_to_dataset, ecg_to_part10_bytes
from remote_dx.ecg.model import ECG, PatientInfo
from remote_dx.ecg.readers import read_ecg
from tests.ecg_samples import csv_text, muse_xml, sierra_xml, synthetic_ecg
from tests.support import SHARED_DATA

ECG_DATA = SHARED_DATA / "ecg"


def _shared(*parts: str) -> list[tuple[str, bytes]]:
    paths = [ECG_DATA.joinpath(*p.split("/")) for p in parts]
    if not all(p.is_file() for p in paths):
        pytest.skip(f"reference ECG data not found at {ECG_DATA}")
    return [(p.name, p.read_bytes()) for p in paths]


def _pydicom_file() -> list[tuple[str, bytes]]:
    with open(get_testdata_file("waveform_ecg.dcm"), "rb") as handle:
        return [("waveform_ecg.dcm", handle.read())]


SOURCES = {
    "dicom": (_pydicom_file, TWELVE_LEAD_ECG),
    "wfdb-ludb": (lambda: _shared("ludb/data/1.hea", "ludb/data/1.dat"), TWELVE_LEAD_ECG),
    "wfdb-mitdb": (lambda: _shared("mitdb/100.hea", "mitdb/100.dat"), GENERAL_ECG),
    "hl7-aecg": (lambda: _shared("hl7-aecg/HL7_Example_aECG.xml"), TWELVE_LEAD_ECG),
    "sierra": (lambda: [("p.xml", sierra_xml(synthetic_ecg()))], TWELVE_LEAD_ECG),
    "muse": (lambda: [("m.xml", muse_xml(synthetic_ecg()))], TWELVE_LEAD_ECG),
    "csv": (lambda: [("c.csv", csv_text(synthetic_ecg()))], TWELVE_LEAD_ECG),
}


def _dcmdump(data: bytes, tmp_path) -> str:
    if shutil.which("dcmdump") is None:
        pytest.skip("dcmtk's dcmdump is not installed")
    path = tmp_path / "ecg.dcm"
    path.write_bytes(data)
    done = subprocess.run(
        ["dcmdump", "-q", "+U8", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "E:" not in done.stderr and "W:" not in done.stderr, done.stderr
    return done.stdout


@pytest.mark.parametrize("source", list(SOURCES))
def test_round_trip_through_dicom(source, tmp_path):
    make, sop_class = SOURCES[source]
    original = read_ecg(make())
    data = ecg_to_part10_bytes(original, patient=PatientInfo(patient_id="P1", name="张^伟"))
    ds = pydicom.dcmread(io.BytesIO(data))
    assert ds.SOPClassUID == sop_class
    assert ds.file_meta.MediaStorageSOPClassUID == sop_class
    back = read_ecg([("back.dcm", data)])
    assert list(back.leads) == list(original.leads)
    assert back.sampling_rate == original.sampling_rate
    for name in original.leads:
        np.testing.assert_allclose(back.leads[name], original.leads[name], atol=0.0005 + 1e-6)
    assert back.patient.name == "张^伟"
    if original.device_measurements is not None:
        assert back.device_measurements.qt_ms == original.device_measurements.qt_ms
        assert back.device_measurements.statements == original.device_measurements.statements
    if source != "wfdb-mitdb":  # 2.6 MB: dcmdump of the other six is proof enough
        dump = _dcmdump(data, tmp_path)
        assert "张^伟" in dump
        assert "TwelveLeadECGWaveformStorage" in dump


def test_waveform_module_attributes():
    ecg = synthetic_ecg()
    ds = ecg_to_dataset(ecg, institution="西坪镇卫生院", device="XIPING_ECG")
    assert ds.SpecificCharacterSet == "ISO_IR 192" and ds.Modality == "ECG"
    assert ds.InstitutionName == "西坪镇卫生院"
    (group,) = ds.WaveformSequence
    assert group.WaveformOriginality == "ORIGINAL"
    assert group.NumberOfWaveformChannels == 12 and group.NumberOfWaveformSamples == 5000
    assert float(group.SamplingFrequency) == 500
    assert group.WaveformBitsAllocated == 16 and group.WaveformSampleInterpretation == "SS"
    assert len(group.WaveformData) == 12 * 5000 * 2
    lead_i = group.ChannelDefinitionSequence[0]
    code = lead_i.ChannelSourceSequence[0]
    assert (code.CodeValue, code.CodingSchemeDesignator) == ("5.6.3-9-1", "SCPECG")
    aVF = group.ChannelDefinitionSequence[5].ChannelSourceSequence[0]
    assert aVF.CodeValue == "5.6.3-9-64"
    units = lead_i.ChannelSensitivityUnitsSequence[0]
    assert (units.CodeValue, units.CodingSchemeDesignator) == ("uV", "UCUM")
    assert float(lead_i.ChannelSensitivity) == 1.0 and float(lead_i.ChannelBaseline) == 0
    assert float(lead_i.ChannelSampleSkew) == 0
    # pydicom's own scaling reads our µV values.
    np.testing.assert_allclose(ds.waveform_array(0)[:, 1] / 1000, ecg.leads["II"], atol=0.0006)


def test_large_amplitude_gets_coarser_sensitivity_not_clipping():
    ecg = synthetic_ecg()
    ecg.leads["V2"] = ecg.leads["V2"] + 40.0  # a 40 mV DC offset
    back = read_ecg([("x.dcm", ecg_to_part10_bytes(ecg))])
    step = 40.6 / 32767  # mV per bit chosen for that lead
    np.testing.assert_allclose(back.leads["V2"], ecg.leads["V2"], atol=step)


def test_sop_class_follows_iod_limits_and_high_rates_are_resampled():
    assert choose_sop_class(12, 5000, 500) == TWELVE_LEAD_ECG
    assert choose_sop_class(2, 650000, 360) == GENERAL_ECG
    assert choose_sop_class(3, 100000, 128) == AMBULATORY_ECG
    fast = synthetic_ecg(rate=2000.0)
    ds = pydicom.dcmread(io.BytesIO(ecg_to_part10_bytes(fast)))
    assert float(ds.WaveformSequence[0].SamplingFrequency) == 500
    assert ds.WaveformSequence[0].NumberOfWaveformSamples == 5000
    back = read_ecg([("x.dcm", ecg_to_part10_bytes(fast))])
    slow = synthetic_ecg(rate=500.0)
    # Resampled, not just relabelled: the R peaks land where a 500 Hz recording has them.
    assert int(np.argmax(back.leads["II"][:500])) == pytest.approx(
        int(np.argmax(slow.leads["II"][:500])), abs=1
    )


def test_median_beat_written_as_derived_group():
    ds = pydicom.dcmread(io.BytesIO(ecg_to_part10_bytes(read_ecg(_pydicom_file()))))
    assert [g.WaveformOriginality for g in ds.WaveformSequence] == ["ORIGINAL", "DERIVED"]
    assert ds.WaveformSequence[1].MultiplexGroupLabel == "MEDIAN BEAT"
    two_lead = ECG(leads={"II": synthetic_ecg().leads["II"]}, sampling_rate=500)
    assert len(ecg_to_dataset(two_lead).WaveformSequence) == 1
