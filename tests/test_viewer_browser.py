"""The browser viewer (issue 5, Proof): a county reader's day in headless Chromium.

Against a live ``remote-dx serve --demo`` holding a chest DX, a prior DX of the same patient and
a 12-lead ECG (pushed by C-STORE as the township devices do): log in, open the DX from the
worklist (Cornerstone3D on our WADO-RS), drag window/level and see the pixels change, measure a
length in mm, put the prior beside it, sign with the keyboard and watch a second worklist drop the
study live (server-sent events); open the ECG, drag the calipers and read ms and bpm at 25 and
50 mm/s. Screenshots go to ``test-artifacts/``. The time from the click to the first image drawn
is printed (issue 5: target ≤ 1 s on this machine), not asserted.

The first tests check the static mount itself (no browser): the viewer at ``/`` never shadows
the API, whatever order routes are added in.
"""

from __future__ import annotations

import io
import os
import re
import uuid
from pathlib import Path
from typing import Any

import pydicom
import pytest
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient

from remote_dx.api import viewer_static
from remote_dx.api.viewer_static import mount_viewer
from tests import browser as browser_fixtures
from tests.browser import LiveHub, require_chromium, require_viewer
from tests.support import SAMPLE_STUDIES

# The shared browser fixtures, bound here so pytest finds them in this module.
browser = browser_fixtures.browser
live_hub = browser_fixtures.live_hub
page = browser_fixtures.page
screenshot = browser_fixtures.screenshot

DX = SAMPLE_STUDIES / "imaging" / "dx_chest_pa_wang_xiaodong_gb18030.dcm"
ECG = SAMPLE_STUDIES / "ecg" / "ecg_12lead_zhang_wei_gb18030.dcm"
TIMEOUT_MS = 90_000  # two cores shared by several test runs: decoding 2048² J2K can queue


# --- the static mount ----------------------------------------------------------------------


@pytest.fixture
def dist(tmp_path: Path) -> Path:
    folder = tmp_path / "dist"
    (folder / "assets").mkdir(parents=True)
    (folder / "index.html").write_text("<!doctype html><title>viewer</title>", encoding="utf-8")
    (folder / "assets" / "main-abc123.js").write_text("console.log(1)", encoding="utf-8")
    return folder


def test_viewer_served_at_root_with_spa_fallback_and_api_untouched(dist: Path) -> None:
    app = FastAPI()
    early = APIRouter()
    early.add_api_route("/api/v1/ping", lambda: {"pong": True})
    app.include_router(early)
    assert mount_viewer(app, dist)
    # A router included after the mount still answers: the mount steps aside for it.
    late = APIRouter()
    late.add_api_route("/dicom-web/studies", lambda: [])
    app.include_router(late)
    client = TestClient(app)

    root = client.get("/")
    assert root.status_code == 200 and "<title>viewer</title>" in root.text
    assert root.headers["cache-control"] == "no-cache"
    assert client.get("/worklist/anything").text == root.text  # a page address: the SPA
    asset = client.get("/assets/main-abc123.js")
    assert asset.status_code == 200 and "immutable" in asset.headers["cache-control"]
    assert client.get("/api/v1/ping").json() == {"pong": True}
    assert client.get("/dicom-web/studies").json() == []
    # Unknown API addresses and missing files stay 404s, never the page.
    assert client.get("/api/v1/nothing-here").status_code == 404
    assert client.get("/dicom-web/nothing/here").status_code == 404
    assert client.get("/assets/missing.js").status_code == 404


def test_viewer_build_found_by_setting_or_working_directory(
    dist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An installed package (the Docker image) has no source tree beside it: the build is named
    by RDX_VIEWER_DIST or found under the working directory."""
    monkeypatch.setattr(viewer_static, "SOURCE_DIST", tmp_path / "no-source-tree" / "dist")
    monkeypatch.delenv("RDX_VIEWER_DIST", raising=False)
    workdir = tmp_path / "app"
    (workdir / "viewer").mkdir(parents=True)
    dist.rename(workdir / "viewer" / "dist")
    monkeypatch.chdir(workdir)
    assert viewer_static.find_dist() == workdir / "viewer" / "dist"
    app = FastAPI()
    assert mount_viewer(app)
    assert "<title>viewer</title>" in TestClient(app).get("/").text
    monkeypatch.setenv("RDX_VIEWER_DIST", str(tmp_path / "elsewhere"))
    assert viewer_static.find_dist() == tmp_path / "elsewhere"
    assert not mount_viewer(FastAPI())  # named, but not built there: not mounted


def test_no_viewer_mounted_without_a_build(tmp_path: Path) -> None:
    app = FastAPI()
    assert not mount_viewer(app, tmp_path / "not-built")
    assert TestClient(app).get("/").status_code == 404


# --- the reader in the browser --------------------------------------------------------------


def _prior_of(source: Path, folder: Path) -> Path:
    """The same patient's chest DX a year earlier: new study/series/instance UIDs."""
    ds = pydicom.dcmread(source)
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        setattr(ds, keyword, f"2.25.{uuid.uuid4().int}")
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240314"
    ds.AccessionNumber = "PRIOR0001"
    path = folder / "prior.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def viewer_built() -> None:
    """Skip before a hub is started when there is no browser or no built viewer."""
    require_chromium()
    require_viewer()


@pytest.fixture
def reading_day(viewer_built: None, live_hub: LiveHub, tmp_path: Path) -> dict[str, Any]:
    prior = _prior_of(DX, tmp_path)
    live_hub.push([DX, prior], calling_ae="XIPING_DR")
    live_hub.push([ECG], calling_ae="XIPING_ECG")
    uids = {
        name: str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)
        for name, path in (("dx", DX), ("prior", prior), ("ecg", ECG))
    }
    token = live_hub.token("county_reader")
    live_hub.wait_listed(token, set(uids.values()))
    return {"uids": uids, "token": token}


def _login(page: Any, base: str) -> None:
    page.goto(f"{base}/")
    page.fill("input[name=username]", "county_reader")
    page.fill("input[name=password]", "demo")
    page.click("button[name=login]")
    page.wait_for_selector("table.worklist tbody tr[data-uid]", timeout=TIMEOUT_MS)


def _grey(png: bytes) -> list[int]:
    from PIL import Image

    return list(Image.open(io.BytesIO(png)).convert("L").tobytes())


def _mean_abs_diff(a: bytes, b: bytes) -> float:
    pa, pb = _grey(a), _grey(b)
    assert len(pa) == len(pb)
    return sum(abs(x - y) for x, y in zip(pa, pb, strict=True)) / len(pa)


def _drag(page: Any, box: dict[str, float], start: tuple[float, float], delta: tuple[float, float]):
    """Press, move in short steps and release as a hand does (Cornerstone waits a moment after
    a press to tell a double click from a drag)."""
    x, y = box["x"] + start[0], box["y"] + start[1]
    page.mouse.move(x, y)
    page.mouse.down()
    page.wait_for_timeout(150)
    for i in range(1, 11):
        page.mouse.move(x + delta[0] * i / 10, y + delta[1] * i / 10)
        page.wait_for_timeout(20)
    page.wait_for_timeout(100)
    page.mouse.up()


@pytest.mark.slow
def test_county_reader_reads_dx_and_ecg_in_the_browser(
    viewer_built: None,
    live_hub: LiveHub,
    reading_day: dict[str, Any],
    page: Any,
    browser: Any,
    screenshot: Any,
) -> None:
    uids = reading_day["uids"]
    base = live_hub.base
    _login(page, base)
    assert page.locator("html").get_attribute("lang") == "zh-CN"
    assert page.locator(".live.on").count() == 1 or page.wait_for_selector(".live.on")
    dx_row = page.locator(f"tr[data-uid='{uids['dx']}']")
    assert "王小东" in dx_row.inner_text()
    screenshot("01-worklist")

    # A second reading screen on the worklist: it must drop the DX live once it is signed.
    watcher_context = browser.new_context(viewport={"width": 1366, "height": 768})
    watcher = watcher_context.new_page()
    _login(watcher, base)
    assert watcher.locator(f"tr[data-uid='{uids['dx']}']").count() == 1

    # --- the DX: first image, window/level, length, prior ---
    dx_row.click()
    current = page.locator(".viewport[data-slot=current]")
    page.wait_for_selector(".viewport[data-slot=current][data-first-image-ms]", timeout=TIMEOUT_MS)
    first_ms = int(current.get_attribute("data-first-image-ms"))
    # The viewer's own figure: the click's event time to the IMAGE_RENDERED of the full image.
    marks = page.evaluate(
        """() => {
          const open = performance.getEntriesByName('rdx:open').at(-1)?.startTime ?? 0;
          return performance.getEntriesByType('mark')
            .filter((e) => e.name.startsWith('rdx:') && e.startTime >= open)
            .map((e) => `${e.name.slice(4)}=${Math.round(e.startTime - open)}`).join(' ');
        }"""
    )
    render = page.evaluate("document.documentElement.dataset.render")
    print(
        f"\nfirst DX image drawn {first_ms} ms after the click (issue 5 target: <= 1000 ms; "
        f"{render} rendering; load {' '.join(f'{v:.1f}' for v in os.getloadavg())}): {marks}"
    )
    assert "first-image" in marks and "image-loaded" in marks
    page.wait_for_selector(".report-panel textarea[name=findings]", timeout=TIMEOUT_MS)
    before_png = current.screenshot()
    wl_before = page.locator(".pane[data-slot=current] .wl").get_attribute("data-wl")
    screenshot("02-dx-opened")

    box = current.bounding_box()
    _drag(page, box, (box["width"] / 2, box["height"] / 2), (160, 120))  # W/L is the left button
    page.wait_for_function(
        "([sel, old]) => document.querySelector(sel)?.dataset.wl !== old",
        arg=[".pane[data-slot=current] .wl", wl_before],
        timeout=TIMEOUT_MS,
    )
    page.wait_for_timeout(300)
    after_png = current.screenshot()
    diff = _mean_abs_diff(before_png, after_png)
    assert diff > 3, f"window/level drag changed the pixels by only {diff:.2f} grey levels"
    screenshot("03-dx-window-level")

    # Length: 300 screen px across the middle, in mm from Pixel Spacing.
    page.click("button[name=tool-length]")
    _drag(page, box, (box["width"] / 2 - 150, box["height"] / 2), (300, 0))
    item = page.wait_for_selector(".measurements li[data-tool=Length]", timeout=TIMEOUT_MS)
    text = item.inner_text()
    match = re.search(r"([\d.]+) mm", text)
    assert match, f"length not in mm: {text!r}"
    ds = pydicom.dcmread(DX, stop_before_pixels=True)
    spacing = float(ds.PixelSpacing[1])
    # The square image fits the viewport's height: one screen px is rows/height image px.
    expected = 300 * ds.Rows / box["height"] * spacing
    screenshot("04-dx-length")
    assert float(match.group(1)) == pytest.approx(expected, rel=0.08), (text, expected)

    # The prior of the same patient, side by side.
    prior_button = page.locator("button[name=prior]")
    page.wait_for_function("() => !document.querySelector('button[name=prior]').disabled")
    prior_button.click()
    page.wait_for_selector(".viewport[data-slot=prior][data-state=ready]", timeout=TIMEOUT_MS)
    assert "20240314" in page.locator(".pane[data-slot=prior] .overlay").inner_text()
    screenshot("05-dx-with-prior")

    # Report: type, autosave, sign with Ctrl+Enter.
    findings = page.locator(".report-panel textarea[name=findings]")
    findings.fill("双肺纹理清晰，未见实变。心影不大。")
    page.locator(".report-panel textarea[name=impression]").fill("心肺未见明显异常。")
    page.wait_for_function(
        "() => document.querySelector('.save-state').textContent.startsWith('已自动保存')",
        timeout=TIMEOUT_MS,
    )
    findings.press("Control+Enter")
    page.wait_for_selector("table.worklist", timeout=TIMEOUT_MS)
    report = live_hub.api("GET", f"/api/v1/studies/{uids['dx']}/report", reading_day["token"])
    assert report.json()["status"] == "final", report.text
    assert "未见实变" in report.json()["versions"][-1]["content"]["findings"]
    # The watcher never reloaded: the server-sent event took the signed study off its list.
    watcher.wait_for_selector(f"tr[data-uid='{uids['dx']}']", state="detached", timeout=30_000)
    watcher.screenshot(path=str(screenshot("06-dx-signed").parent / "06-watcher-worklist.png"))
    watcher_context.close()

    # --- the ECG: paper, calipers at 25 and 50 mm/s ---
    page.click(f"tr[data-uid='{uids['ecg']}']")
    canvas = page.wait_for_selector("canvas.ecg-canvas", timeout=TIMEOUT_MS)
    page.wait_for_selector(".analysis table.measures", timeout=TIMEOUT_MS)
    assert page.locator(".analysis tr[data-key=heart_rate] td").first.inner_text().isdigit()
    assert page.locator(".report-panel").count() == 1

    def caliper(px: float) -> tuple[float, float]:
        canvas.scroll_into_view_if_needed()
        box = canvas.bounding_box()
        _drag(page, box, (300, 120), (px, 0))  # across the top row, always in view
        readout = page.locator(".caliper-readout")
        return float(readout.get_attribute("data-ms")), float(readout.get_attribute("data-bpm"))

    px_per_mm = float(canvas.get_attribute("data-px-per-mm"))
    ms25, bpm25 = caliper(200)
    assert ms25 == pytest.approx(200 / px_per_mm / 25 * 1000, abs=2)
    assert bpm25 == pytest.approx(60_000 / ms25, abs=1)
    assert re.search(r"\d+ ms · .* \d+ bpm", page.locator(".caliper-readout").inner_text())
    screenshot("07-ecg-caliper-25mm-s")
    page.click("button[name=speed-50]")
    page.click("button[name=gain-20]")
    assert canvas.get_attribute("data-speed") == "50"
    ms50, _ = caliper(200)
    assert ms50 == pytest.approx(ms25 / 2, abs=2)  # twice the paper speed: half the time
    screenshot("08-ecg-caliper-50mm-s-20mm-mV")

    # English on request.
    page.click("button[name=lang]")
    page.wait_for_selector("button[name=sign]:has-text('Sign')")
    screenshot("09-ecg-english")

    # A laptop screen: the paper, the analysis and the report still share one screen.
    page.set_viewport_size({"width": 1366, "height": 768})
    page.wait_for_timeout(300)
    panel = page.locator(".report-panel button[name=sign]").bounding_box()
    assert panel is not None and panel["x"] + panel["width"] <= 1366
    screenshot("10-ecg-laptop-1366x768")
