"""The 12-lead printout (PNG/SVG/PDF at 25 mm/s, 10 mm/mV) and the downsampled leads."""

from __future__ import annotations

import io
import shutil
import subprocess
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image

from remote_dx.ecg import render
from remote_dx.ecg.model import PatientInfo
from remote_dx.ecg.readers import read_ecg
from tests.ecg_samples import synthetic_ecg
from tests.support import ROOT, SHARED_DATA

MEASUREMENTS = {"HR": "72 bpm", "PR": "152 ms", "QRS": "88 ms", "QT/QTc": "380/416 ms"}


def _ecg():
    ecg = synthetic_ecg()
    ecg.patient = PatientInfo(patient_id="T-001", name="张^伟", sex="M", age_years=63)
    return ecg


def _dark(pixel) -> bool:
    return sum(pixel[:3]) < 200


def test_png_size_and_calibration_pulse():
    dpi = render.DEFAULT_DPI
    scale = render.px_per_mm(dpi)
    assert scale >= 4
    png = render.render_png(_ecg(), measurements=MEASUREMENTS, dpi=dpi)
    image = Image.open(io.BytesIO(png)).convert("RGB")
    # A4 landscape at 25 mm/s: the 250 mm of trace for 10 s, in a 297 × 210 mm page.
    assert image.size == (round(297 * scale), round(210 * scale))
    assert render.PAPER_SPEED * 10 <= render.GRID_W
    # The first row's pulse: walk down the column through the middle of its top.
    baseline_mm = render.GRID_TOP + render.ROW_H * 0.6
    x = round((render.GRID_LEFT + 2.0 + 1.5 + 2.5) * scale)
    top_band = range(round((baseline_mm - 12) * scale), round((baseline_mm - 8) * scale))
    top_rows = [y for y in top_band if _dark(image.getpixel((x, y)))]
    x_base = round((render.GRID_LEFT + 2.0 + 0.7) * scale)
    base_band = range(round((baseline_mm - 2) * scale), round((baseline_mm + 2) * scale))
    base_rows = [y for y in base_band if _dark(image.getpixel((x_base, y)))]
    assert top_rows and base_rows, "calibration pulse not drawn"
    height_px = np.mean(base_rows) - np.mean(top_rows)
    assert height_px == pytest.approx(10 * scale, abs=1.5)  # 1 mV = 10 mm
    # 200 ms wide = 5 mm: the top is dark across its middle, not beyond.
    y_top = round(np.mean(top_rows))
    inside = round((render.GRID_LEFT + 2.0 + 1.5 + 4.5) * scale)
    outside = round((render.GRID_LEFT + 2.0 + 1.5 + 5.8) * scale)
    assert _dark(image.getpixel((inside, y_top)))
    assert not _dark(image.getpixel((outside, y_top)))


def test_png_of_a_ludb_record_saved_for_inspection():
    folder = SHARED_DATA / "ecg" / "ludb" / "data"
    if not folder.is_dir():
        pytest.skip(f"reference ECG data not found at {folder}")
    ecg = read_ecg([(p.name, p.read_bytes()) for p in (folder / "1.hea", folder / "1.dat")])
    png = render.render_png(ecg, title="LUDB record 1")  # no measurements: none were made
    out = ROOT / "test-artifacts"
    out.mkdir(exist_ok=True)
    (out / "ecg_ludb_1.png").write_bytes(png)
    assert Image.open(io.BytesIO(png)).format == "PNG"


def test_svg_parses_and_keeps_mm_scale():
    svg = render.render_svg(_ecg(), measurements=MEASUREMENTS)
    root = ET.fromstring(svg.encode())
    ns = "{http://www.w3.org/2000/svg}"
    assert root.get("width") == "297mm" and root.get("viewBox") == "0 0 297 210"
    texts = [t.text for t in root.iter(f"{ns}text")]
    assert "II" in texts and any("张 伟" in (t or "") for t in texts)
    polylines = list(root.iter(f"{ns}polyline"))
    assert len(polylines) == 4 + 12 + 1  # four pulses, twelve 2.5 s segments, one rhythm strip


def test_pdf_text_has_patient_and_leads(tmp_path):
    if shutil.which("pdftotext") is None:
        pytest.skip("pdftotext (poppler-utils) is not installed")
    pdf = render.render_pdf(_ecg(), measurements=MEASUREMENTS)
    assert pdf.startswith(b"%PDF")
    path = tmp_path / "ecg.pdf"
    path.write_bytes(pdf)
    text = subprocess.run(
        ["pdftotext", "-enc", "UTF-8", str(path), "-"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "II" in text and "T-001" in text and "380/416 ms" in text
    if render.cjk_font_path():
        assert "张" in text and "伟" in text
    else:
        assert "?" in text  # no CJK font: replaced, not drawn as empty boxes


def test_render_dispatch():
    content, media = render.render(_ecg(), "svg")
    assert media == "image/svg+xml" and content.startswith(b"<?xml")
    with pytest.raises(ValueError, match="unknown printout format"):
        render.render(_ecg(), "tiff")


def test_downsample_keeps_peaks_and_limit():
    ecg = _ecg()
    data = render.downsample_leads(ecg, max_points=1000)
    assert set(data["leads"]) == set(ecg.leads)
    assert all(len(v) <= 1000 for v in data["leads"].values())
    assert data["sampling_rate"] == pytest.approx(len(data["leads"]["II"]) / ecg.duration_s)
    for name, values in ecg.leads.items():
        assert max(data["leads"][name]) == pytest.approx(float(values.max()), abs=1e-4)
        assert min(data["leads"][name]) == pytest.approx(float(values.min()), abs=1e-4)
    full = render.downsample_leads(ecg, max_points=10_000)
    assert full["sampling_rate"] == 500 and len(full["leads"]["I"]) == ecg.n_samples


def test_without_a_cjk_font_chinese_falls_back_to_latin(monkeypatch, tmp_path):
    monkeypatch.setattr(render, "cjk_font_path", lambda: None)
    png = render.render_png(_ecg())
    assert Image.open(io.BytesIO(png)).size == render.png_size()
    svg = render.render_svg(_ecg())
    assert "张" not in svg and "?" in svg
    if shutil.which("pdftotext"):
        path = tmp_path / "latin.pdf"
        path.write_bytes(render.render_pdf(_ecg()))
        text = subprocess.run(
            ["pdftotext", str(path), "-"], capture_output=True, text=True, check=True
        ).stdout
        assert "T-001" in text and "张" not in text
