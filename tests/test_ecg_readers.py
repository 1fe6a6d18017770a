"""ECG format readers: real files (pydicom's cart ECG, LUDB, MIT-BIH, HL7 aECG), generated vendor
files (Philips Sierra XLI/uncompressed, GE MUSE, CSV) and every kind of bad input."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from remote_dx.ecg.dicom_writer import ecg_to_dataset, ecg_to_part10_bytes
from remote_dx.ecg.model import ECG, ECGError
from remote_dx.ecg.readers import detect_format, read_ecg
from tests.ecg_samples import EIGHT, TWELVE, csv_text, muse_xml, sierra_xml, synthetic_ecg
from tests.support import SHARED_DATA

ECG_DATA = SHARED_DATA / "ecg"
needs_shared = pytest.mark.skipif(
    not ECG_DATA.is_dir(), reason=f"reference ECG data not found at {ECG_DATA}"
)


def _files(*paths) -> list[tuple[str, bytes]]:
    return [(p.name, p.read_bytes()) for p in paths]


def _max_error(a: ECG, b: ECG) -> float:
    return max(float(np.max(np.abs(a.leads[n] - b.leads[n]))) for n in a.leads)


# --- DICOM --------------------------------------------------------------------------------------


def test_pydicom_cart_ecg_with_its_own_measurements():
    path = get_testdata_file("waveform_ecg.dcm")
    with open(path, "rb") as handle:
        data = handle.read()
    ecg = read_ecg([("waveform_ecg.dcm", data)])
    assert list(ecg.leads) == list(TWELVE)
    assert ecg.sampling_rate == 1000 and ecg.n_samples == 10000
    # Our scaling against pydicom's own (sensitivity × correction + baseline, in µV).
    ds = pydicom.dcmread(path)
    expected_mv = ds.waveform_array(0)[:, 1] / 1000.0
    np.testing.assert_allclose(ecg.leads["II"], expected_mv, atol=1e-6)
    m = ecg.device_measurements
    assert m is not None
    assert (m.pr_ms, m.qrs_ms, m.qt_ms, m.qtc_ms) == (161, 75, 368, 370)
    assert m.axis_deg == 52
    assert m.heart_rate == pytest.approx(60000 / 982, abs=0.1)
    assert "RITMO SINUSALE" in m.statements
    assert ecg.median_beat is not None and ecg.median_beat.sampling_rate == 1000
    assert len(ecg.median_beat.leads["V6"]) == 1200
    assert ecg.patient.patient_id == "642341" and ecg.patient.sex == "F"
    assert ecg.acquired_at is not None and ecg.acquired_at.year == 2013
    assert detect_format([("x.bin", data)]) == "dicom"  # by the DICM preamble, not the name


def _written(ecg: ECG, **changes) -> pydicom.Dataset:
    ds = ecg_to_dataset(ecg)
    for key, value in changes.items():
        setattr(ds, key, value)
    return ds


def _bytes(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_dicom_eight_leads_are_completed_to_twelve():
    full = synthetic_ecg()
    eight = ECG(leads={n: full.leads[n] for n in EIGHT}, sampling_rate=full.sampling_rate)
    ecg = read_ecg([("eight.dcm", ecg_to_part10_bytes(eight))])
    assert list(ecg.leads) == list(TWELVE)
    assert _max_error(full, ecg) < 0.002  # derived from 1 µV-quantised I and II


def test_dicom_units_correction_baseline_and_labels():
    ecg = synthetic_ecg()
    ds = ecg_to_dataset(ecg)
    group = ds.WaveformSequence[0]
    # Re-express channel 1 in mV with a correction factor and baseline, channel 2 by label only.
    first = group.ChannelDefinitionSequence[0]
    first.ChannelSensitivity = "0.0005"
    first.ChannelSensitivityCorrectionFactor = "2"
    first.ChannelBaseline = "0.25"
    first.ChannelSensitivityUnitsSequence[0].CodeValue = "mV"
    second = group.ChannelDefinitionSequence[1]
    del second.ChannelSourceSequence
    second.ChannelLabel = "Lead II"
    read = read_ecg([("units.dcm", _bytes(ds))])
    raw = np.frombuffer(group.WaveformData, dtype="<i2").reshape(-1, 12)
    np.testing.assert_allclose(read.leads["I"], raw[:, 0] * 0.0005 * 2 + 0.25, atol=1e-6)
    np.testing.assert_allclose(read.leads["II"], ecg.leads["II"], atol=0.0006)


def test_dicom_rhythm_group_chosen_over_median_beat_listed_first():
    ecg = synthetic_ecg()
    ds = ecg_to_dataset(ecg)
    rhythm = ds.WaveformSequence[0]
    beat = ecg_to_dataset(
        ECG(leads={n: v[:600] for n, v in ecg.leads.items()}, sampling_rate=500)
    ).WaveformSequence[0]
    beat.WaveformOriginality = "DERIVED"
    beat.MultiplexGroupLabel = "MEDIAN BEAT"
    ds.WaveformSequence = [beat, rhythm]
    read = read_ecg([("groups.dcm", _bytes(ds))])
    assert read.n_samples == ecg.n_samples
    assert read.median_beat is not None and len(read.median_beat.leads["I"]) == 600


# --- WFDB ---------------------------------------------------------------------------------------


@needs_shared
def test_ludb_record_matches_wfdb():
    import wfdb

    folder = ECG_DATA / "ludb" / "data"
    ecg = read_ecg(_files(folder / "1.hea", folder / "1.dat"))
    assert list(ecg.leads) == list(TWELVE)
    assert ecg.sampling_rate == 500 and ecg.n_samples == 5000
    record = wfdb.rdrecord(str(folder / "1"))
    np.testing.assert_allclose(ecg.leads["V6"], record.p_signal[:, 11], atol=1e-6)
    assert ecg.patient.sex == "F" and ecg.patient.age_years == 51


@needs_shared
def test_mitbih_two_lead_record_is_an_ecg():
    folder = ECG_DATA / "mitdb"
    ecg = read_ecg(_files(folder / "100.hea", folder / "100.dat"))
    assert list(ecg.leads) == ["II", "V5"]  # MLII is lead II placement for our purposes
    assert ecg.sampling_rate == 360 and ecg.n_samples == 650000
    assert ecg.patient.age_years == 69 and ecg.patient.sex == "M"


# --- HL7 aECG -----------------------------------------------------------------------------------


@needs_shared
def test_hl7_aecg_example():
    path = ECG_DATA / "hl7-aecg" / "HL7_Example_aECG.xml"
    ecg = read_ecg(_files(path))
    assert list(ecg.leads) == list(TWELVE)
    assert ecg.sampling_rate == 500 and ecg.n_samples == 5000
    text = path.read_text()
    block = text[text.index('code="MDC_ECG_LEAD_I"') :]
    digits = re.search(r"<digits>([^<]*)</digits>", block).group(1).split()
    scale = float(re.search(r'<scale value="([^"]+)" unit="uV"', block).group(1))
    np.testing.assert_allclose(ecg.leads["I"][:50], np.array(digits[:50], float) * scale / 1000)
    assert ecg.patient.sex == "M" and ecg.patient.birth_date == "19530508"
    m = ecg.device_measurements
    assert m is not None and m.pr_ms and m.qt_ms and "Sinus Rhythm" in m.statements


# --- Philips Sierra, GE MUSE, CSV ---------------------------------------------------------------


@pytest.mark.parametrize("compression", ["XLI", "Uncompressed"])
def test_philips_sierra(compression):
    source = synthetic_ecg()
    ecg = read_ecg([("philips.xml", sierra_xml(source, compression=compression))])
    assert ecg.source_format == "philips-sierra"
    assert list(ecg.leads) == list(TWELVE)
    assert _max_error(source, ecg) <= 0.0025 + 1e-6  # half of the 5 µV step
    m = ecg.device_measurements
    assert m is not None and (m.pr_ms, m.qrs_ms, m.qtc_ms) == (152, 88, 416)
    assert ecg.patient.name == "TEST^ECG" and ecg.device == "PageWriter TC30"


def test_ge_muse_eight_leads_derive_four():
    source = synthetic_ecg()
    ecg = read_ecg([("muse.xml", muse_xml(source))])
    assert list(ecg.leads) == list(TWELVE)
    stored = max(float(np.max(np.abs(source.leads[n] - ecg.leads[n]))) for n in EIGHT)
    assert stored <= 0.00244 + 1e-6  # half of 4.88 µV
    assert _max_error(source, ecg) <= 1.5 * 0.00488  # derived leads add the quantisation of two
    assert ecg.device_measurements.qt_ms == 380
    assert ecg.device_measurements.statements == ["Normal sinus rhythm"]
    assert ecg.patient.birth_date == "19660314" and ecg.acquired_at.month == 5


def test_csv_with_metadata_line():
    source = synthetic_ecg()
    ecg = read_ecg([("ecg.csv", csv_text(source))])
    assert list(ecg.leads) == list(TWELVE) and ecg.sampling_rate == 500
    assert _max_error(source, ecg) <= 0.0005 + 1e-6


def test_csv_parameters_semicolons_gb18030_time_column():
    source = synthetic_ecg()
    rows = ["time_ms;I;II;V1"]
    for k in range(source.n_samples):
        rows.append(
            f"{k * 2};{source.leads['I'][k]:.4f};{source.leads['II'][k]:.4f};"
            f"{source.leads['V1'][k]:.4f}"
        )
    data = ("\ufeff采样率=500,单位=mV\n" + "\n".join(rows)).encode("gb18030")
    ecg = read_ecg([("表格.csv", data)])
    assert ecg.sampling_rate == 500 and set(ecg.leads) >= {"I", "II", "III", "aVF", "V1"}
    # The same table without metadata takes the rate from the time column, units from the form.
    bare = "\n".join(rows).encode()
    assert read_ecg([("t.csv", bare)], units="mV").sampling_rate == 500
    with pytest.raises(ECGError, match="says 500 Hz but the upload says 250"):
        read_ecg([("ecg.csv", csv_text(source))], sampling_rate=250)
    no_meta = csv_text(source, meta=None)
    assert read_ecg([("x.csv", no_meta)], sampling_rate=500, units="uV").n_samples == 5000


# --- Bad input ----------------------------------------------------------------------------------


def _aecg_with_short_lead() -> bytes:
    path = ECG_DATA / "hl7-aecg" / "HL7_Example_aECG.xml"
    text = path.read_text()
    start = text.index("<digits>", text.index('code="MDC_ECG_LEAD_V2"'))
    return (text[: start + 8] + text[start + 8 :].split(" ", 40)[-1]).encode()


def _dicom_truncated() -> bytes:
    ds = ecg_to_dataset(synthetic_ecg())
    ds.WaveformSequence[0].WaveformData = ds.WaveformSequence[0].WaveformData[:5000]
    return _bytes(ds)


def _dicom_without_sensitivity() -> bytes:
    ds = ecg_to_dataset(synthetic_ecg())
    del ds.WaveformSequence[0].ChannelDefinitionSequence[3].ChannelSensitivity
    return _bytes(ds)


def _flat_csv() -> bytes:
    return b"# sampling_rate=500; units=uV\nI,II,V1\n" + b"0,0,0\n" * 5000


def _sierra_corrupt() -> bytes:
    xml = sierra_xml(synthetic_ecg(), compression="Uncompressed").decode()
    return re.sub(r"(leadlabels=\"[^\"]*\">\s*)\S{10}", r"\1!!!!!!!!!!", xml).encode()


def _sierra_short() -> bytes:
    xml = sierra_xml(synthetic_ecg(), compression="Uncompressed").decode()
    start = xml.index('">', xml.index("leadlabels=")) + 2
    end = xml.index("</parsedwaveforms>")
    payload = base64.b64decode("".join(xml[start:end].split()))
    short = base64.b64encode(payload[: len(payload) // 3]).decode()
    return (xml[:start] + short + xml[end:]).encode()


def _muse_without_lead_i() -> bytes:
    xml = muse_xml(synthetic_ecg()).decode("latin-1")
    return re.sub(
        r"<LeadData>(?:(?!</LeadData>).)*<LeadID>I</LeadID>.*?</LeadData>",
        "",
        xml,
        count=1,
        flags=re.S,
    ).encode("latin-1")


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;">]>
<AnnotatedECG xmlns="urn:hl7-org:v3">&lol2;</AnnotatedECG>"""


def _wfdb(name: str, header_change=None, dat_bytes: int | None = None, dat=True):
    folder = ECG_DATA / "ludb" / "data"
    header = (folder / "1.hea").read_text()
    if header_change:
        header = header_change(header)
    files = [("1.hea", header.encode())]
    if dat:
        data = (folder / "1.dat").read_bytes()
        files.append(("1.dat", data[:dat_bytes] if dat_bytes is not None else data))
    return files


BAD_INPUTS = {
    "unknown binary": (lambda: [("x.bin", bytes(range(256)) * 40)], "unrecognised ECG format"),
    "unknown XML": (lambda: [("x.xml", b"<html><body/></html>")], "not a known ECG format"),
    "entity expansion": (lambda: [("x.xml", BILLION_LAUGHS)], "entity declarations"),
    "empty file": (lambda: [("x.csv", b"")], "empty file"),
    "two ECGs in one upload": (
        lambda: [("a.xml", muse_xml(synthetic_ecg())), ("b.csv", csv_text(synthetic_ecg()))],
        "one file per ECG",
    ),
    "WFDB .dat truncated": (lambda: _wfdb("1", dat_bytes=60000), "1.dat is truncated"),
    "WFDB .dat missing": (lambda: _wfdb("1", dat=False), "which was not sent"),
    "WFDB header without rate": (
        lambda: _wfdb("1", header_change=lambda h: h.replace("1 12 500 5000", "1 12", 1)),
        "no sampling frequency",
    ),
    "WFDB rate too low": (
        lambda: _wfdb("1", header_change=lambda h: h.replace("1 12 500 5000", "1 12 50 5000", 1)),
        "outside 100",
    ),
    "DICOM waveform truncated": (lambda: [("t.dcm", _dicom_truncated())], "truncated"),
    "DICOM without sensitivity": (
        lambda: [("s.dcm", _dicom_without_sensitivity())],
        "ChannelSensitivity",
    ),
    "all leads flat": (lambda: [("flat.csv", _flat_csv())], "all leads are flat"),
    "aECG leads of different lengths": (
        lambda: [("short.xml", _aecg_with_short_lead())],
        "different lengths",
    ),
    "MUSE base64 truncated": (
        lambda: [("m.xml", muse_xml(synthetic_ecg(), truncate_lead="V3"))],
        "V3: WaveFormData is truncated",
    ),
    "MUSE without lead I": (lambda: [("m.xml", _muse_without_lead_i())], "lead\\(s\\) I missing"),
    "Sierra base64 corrupt": (lambda: [("p.xml", _sierra_corrupt())], "base64"),
    "Sierra waveform truncated": (lambda: [("p.xml", _sierra_short())], "truncated"),
    "CSV without sampling rate": (
        lambda: [("x.csv", csv_text(synthetic_ecg(), meta=None))],
        "sampling rate missing",
    ),
    "CSV with a non-number": (
        lambda: [("x.csv", b"# sampling_rate=500; units=uV\nI,II\n1,2\n3,abc\n")],
        "'abc' is not a number",
    ),
    "CSV with unknown columns": (
        lambda: [("x.csv", b"# sampling_rate=500; units=uV\nfoo,bar\n1,2\n")],
        "not lead names",
    ),
    "too short": (
        lambda: [("x.csv", b"# sampling_rate=500; units=uV\nI,II\n" + b"1,2\n" * 100)],
        "at least 2 s",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_refused_with_a_clear_message(case):
    make, message = BAD_INPUTS[case]
    if ("WFDB" in case or "aECG" in case) and not ECG_DATA.is_dir():
        pytest.skip(f"reference ECG data not found at {ECG_DATA}")
    with pytest.raises(ECGError, match=message):
        read_ecg(make())


def test_one_flat_lead_is_not_a_reader_error():
    source = synthetic_ecg()
    source.leads["V3"] = np.zeros_like(source.leads["V3"])
    ecg = read_ecg([("ecg.csv", csv_text(source))])
    assert float(np.ptp(ecg.leads["V3"])) == 0  # reported by the analysis' quality step instead
