"""Viewer benchmark: the reader's wait from a click on a DX worklist row to its image drawn.

Usage (from the repository root; needs Debian's /usr/bin/chromium, the playwright package and a
built viewer, ``make viewer/dist``)::

    .venv/bin/python bench/viewer_first_image.py             # 5 rounds per mode
    .venv/bin/python bench/viewer_first_image.py --rounds 3 --modes at-once,looked

A ``remote-dx serve --demo`` hub on free ports holds three full-size radiographs, each stored as
lossless JPEG 2000 (two 2048² DX, one 1955×1841 CR), pushed by C-STORE as a township DR does.
Each round opens a new tab in one browser context (the viewer's files in the HTTP cache, as on a
reading PC after its first day; the decoded images not: a new tab starts empty), logs in as the
county reader, waits for the worklist, and clicks the DX row. The figure is the viewer's own: from
the click's event time to the IMAGE_RENDERED of the full 2048² image in the viewport (never a
thumbnail), ``data-first-image-ms``; the wall clock seen by the driver is printed beside it.

Modes:
- ``cold-gpu``: no prefetch, WebGL drawing (SwiftShader here), the click at once: close to the
  viewer before the prefetch and CPU drawing (which also loaded Cornerstone only when idle).
- ``cold``: no prefetch, the click at once: every step after the click (metadata, frame fetch, the
  wasm JPEG 2000 decode, drawing).
- ``at-once``: the shipped viewer, clicked as soon as the worklist shows (prefetch under way).
- ``looked``: the shipped viewer, clicked after 3 s on the worklist (a reader reading the list).
- ``looked-gpu``: as ``looked`` with Cornerstone's WebGL path forced (SwiftShader here).

Target (issue 5): ≤ 1000 ms on this machine. Prints per mode min / median / max and the median
round's phase marks (ms after the click), and the load average before and after. Exits 1 only when
a round fails outright.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` and `remote_dx` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
from tests.browser import CHROMIUM, CHROMIUM_ARGS  # the browser the tests drive, same flags

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
IMAGES = [
    ROOT / "sample_studies" / "imaging" / "dx_chest_pa_wang_xiaodong_gb18030.dcm",
    ROOT / "sample_studies" / "imaging" / "dx_chest_pa_li_xiuying_iso2022_ir58.dcm",
    ROOT / "sample_studies" / "imaging" / "RG1_J2KR_cr_chest.dcm",
]
MODES = {
    # name: (localStorage settings, seconds on the worklist before the click)
    "cold-gpu": ({"rdx.prefetch": "off", "rdx.render": "gpu"}, 0.0),
    "cold": ({"rdx.prefetch": "off"}, 0.0),
    "at-once": ({}, 0.0),
    "looked": ({}, 3.0),
    "looked-gpu": ({"rdx.render": "gpu"}, 3.0),
}
MARKS_JS = """() => {
  const open = performance.getEntriesByName('rdx:open').at(-1)?.startTime ?? 0;
  return performance.getEntriesByType('mark')
    .filter((e) => e.name.startsWith('rdx:') && e.startTime >= open)
    .map((e) => `${e.name.slice(4)}=${Math.round(e.startTime - open)}`).join(' ');
}"""


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def load() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def start_hub(folder: Path) -> tuple[subprocess.Popen[bytes], str, int]:
    http, dicom = free_port(), free_port()
    env = {
        **os.environ,
        "RDX_DATA_DIR": str(folder / "var"),
        "RDX_HTTP_HOST": "127.0.0.1",
        "RDX_HTTP_PORT": str(http),
        "RDX_DICOM_HOST": "127.0.0.1",
        "RDX_DICOM_PORT": str(dicom),
        "RDX_QUIET_SECONDS": "2",
        "RDX_SWEEP_INTERVAL": "0.2",
        "RDX_JWT_SECRET": "bench-secret-not-for-production-0123456789",
    }
    log = (folder / "hub.log").open("wb")
    process = subprocess.Popen(
        [str(BIN / "remote-dx"), "serve", "--demo"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{http}"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"hub exited: {(folder / 'hub.log').read_text()[-2000:]}")
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return process, base, dicom
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit("the hub did not become ready in 240 s")


def feed(base: str, dicom_port: int) -> None:
    pushed = subprocess.run(
        [
            *(str(BIN / "remote-dx"), "push", *map(str, IMAGES)),
            *("--port", str(dicom_port), "--calling-ae", "XIPING_DR", "--called-ae", "REMOTE_DX"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if pushed.returncode != 0:
        raise SystemExit(pushed.stdout + pushed.stderr)
    token = httpx.post(
        f"{base}/api/v1/auth/token", data={"username": "county_reader", "password": "demo"}
    ).json()["access_token"]
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        items = httpx.get(
            f"{base}/api/v1/worklist",
            headers={"Authorization": f"Bearer {token}"},
            params={"limit": 50},
        ).json()["items"]
        if len([i for i in items if i["modality"] in ("DX", "CR")]) >= len(IMAGES):
            return
        time.sleep(0.5)
    raise SystemExit("the radiographs did not reach the worklist in 180 s")


def one_round(context: Any, base: str, wait: float) -> tuple[int, int, str]:
    page = context.new_page()
    try:
        page.goto(f"{base}/")
        page.fill("input[name=username]", "county_reader")
        page.fill("input[name=password]", "demo")
        page.click("button[name=login]")
        page.wait_for_selector("table.worklist tbody tr[data-modality=DX]", timeout=120_000)
        page.wait_for_timeout(wait * 1000)
        row = page.locator("table.worklist tbody tr[data-modality=DX]").first
        started = time.perf_counter()
        row.click()
        page.wait_for_selector(".viewport[data-slot=current][data-first-image-ms]", timeout=120_000)
        wall = round((time.perf_counter() - started) * 1000)
        ms = int(page.locator(".viewport[data-slot=current]").get_attribute("data-first-image-ms"))
        return ms, wall, page.evaluate(MARKS_JS)
    finally:
        page.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--modes", default=",".join(MODES))
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    for mode in modes:
        if mode not in MODES:
            parser.error(f"unknown mode {mode!r}; one of {', '.join(MODES)}")
    if not (ROOT / "viewer" / "dist" / "index.html").is_file():
        raise SystemExit("the viewer is not built: make viewer/dist")
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="rdx-viewer-bench-") as tmp:
        hub, base, dicom_port = start_hub(Path(tmp))
        try:
            feed(base, dicom_port)
            print(f"load average before: {load()}  ({os.cpu_count()} cores)")
            results: dict[str, list[tuple[int, int, str]]] = {}
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
                )
                for mode in modes:
                    settings, wait = MODES[mode]
                    context = browser.new_context(
                        viewport={"width": 1920, "height": 1080}, locale="zh-CN"
                    )
                    script = "".join(
                        f"localStorage.setItem({k!r}, {v!r});" for k, v in settings.items()
                    )
                    context.add_init_script(script or "void 0")
                    one_round(context, base, wait)  # untimed: the viewer's files into the cache
                    results[mode] = []
                    for _ in range(args.rounds):
                        results[mode].append(one_round(context, base, wait))
                        print(f"  {mode:<11} {results[mode][-1][0]:>5} ms", flush=True)
                    context.close()
                browser.close()
            print(f"load average after: {load()}")
            print(f"\n{'mode':<11} {'min':>6} {'median':>7} {'max':>6}  (ms, click → image drawn)")
            for mode in modes:
                figures = sorted(results[mode])
                values = [f[0] for f in figures]
                median = figures[len(figures) // 2]
                print(
                    f"{mode:<11} {min(values):>6} {statistics.median(values):>7.0f} "
                    f"{max(values):>6}  median round (wall {median[1]} ms): {median[2]}"
                )
            print("target: <= 1000 ms (issue 5)")
        finally:
            hub.send_signal(signal.SIGTERM)
            try:
                hub.wait(timeout=20)
            except subprocess.TimeoutExpired:
                hub.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
