"""Browser tests' shared pieces: a live hub with the demo network, headless Chromium, screenshots.

Use from a test module by importing the fixtures (they are not in conftest, so only browser tests
pay for them)::

    from tests import browser as browser_fixtures

    browser = browser_fixtures.browser  # module-level names: pytest finds the fixtures, and
    live_hub = browser_fixtures.live_hub  # ruff sees no import shadowed by test parameters
    page = browser_fixtures.page
    screenshot = browser_fixtures.screenshot

    def test_something(live_hub, page, screenshot):
        page.goto(live_hub.base + "/")
        screenshot("first-page")

- ``live_hub``: ``remote-dx serve --demo`` as its own process on free ports (HTTP + DICOM),
  embedded mode under the test's tmp dir; ``live_hub.token(user)``, ``live_hub.api(...)`` and
  ``live_hub.push(files, calling_ae)`` (our C-STORE client) help feed and inspect it.
- ``browser``: Debian's ``/usr/bin/chromium`` driven by Playwright (never a downloaded browser),
  headless with the flags CI uses; one per test module.
- ``page``: a fresh 1920×1080 page (a reading monitor); console errors are collected in
  ``page.console_errors`` so a test can show them when something fails.
- ``screenshot(name)``: saves ``test-artifacts/<test name>/<name>.png`` and returns the path.

Tests skip, with the reason, when Chromium or the ``playwright`` package is missing, and (for
``viewer_built``) when ``viewer/dist`` has not been built (``make viewer/dist``).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from remote_dx.core.settings import Settings
from tests.conftest import settings_env
from tests.support import ROOT, wait_until

CHROMIUM = os.environ.get("RDX_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # WebGL without a GPU: Chromium's software rasteriser (Cornerstone3D draws with WebGL).
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
]
ARTIFACTS = ROOT / "test-artifacts"
VIEWER_DIST = ROOT / "viewer" / "dist"
BIN = Path(sys.executable).parent


def require_chromium() -> None:
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("the playwright package is not installed (pip install -e '.[test]')")


def require_viewer() -> None:
    if not (VIEWER_DIST / "index.html").is_file():
        pytest.skip(f"the viewer is not built ({VIEWER_DIST} missing: run `make viewer/dist`)")


@dataclass
class LiveHub:
    """A running ``remote-dx serve --demo``."""

    settings: Settings
    base: str
    log_path: Path

    def token(self, username: str, password: str = "demo") -> str:
        answer = httpx.post(
            f"{self.base}/api/v1/auth/token",
            data={"username": username, "password": password},
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
        return str(answer.json()["access_token"])

    def api(self, method: str, path: str, token: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(
            method,
            f"{self.base}{path}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
            **kwargs,
        )

    def push(self, files: list[Path], calling_ae: str = "XIPING_DR") -> None:
        """Send ``files`` by C-STORE as the named township device would (our push client)."""
        pushed = subprocess.run(
            [
                str(BIN / "remote-dx"),
                "push",
                *map(str, files),
                "--port",
                str(self.settings.dicom_port),
                "--calling-ae",
                calling_ae,
                "--called-ae",
                self.settings.ae_title,
            ],
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert pushed.returncode == 0, pushed.stdout + pushed.stderr

    def wait_listed(self, token: str, study_uids: set[str], timeout: float = 120) -> list[dict]:
        """Wait until every study is on the user's worklist (processed and routed)."""

        def listed() -> list[dict] | None:
            items = self.api("GET", "/api/v1/worklist", token, params={"limit": 200}).json()
            found = [i for i in items["items"] if i["study_uid"] in study_uids]
            return found if {i["study_uid"] for i in found} >= study_uids else None

        return wait_until(listed, timeout=timeout, message=f"{study_uids} on the worklist")  # type: ignore[return-value]

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


@pytest.fixture
def live_hub(settings: Settings, tmp_path: Path) -> Iterator[LiveHub]:
    env = {**os.environ, **settings_env(settings)}
    log_path = tmp_path / "hub.log"
    base = f"http://127.0.0.1:{settings.http_port}"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(BIN / "remote-dx"), "serve", "--demo"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:

            def ready() -> bool:
                if process.poll() is not None:
                    raise AssertionError(f"hub exited: {log_path.read_text()[-3000:]}")
                try:
                    return httpx.get(f"{base}/readyz", timeout=1).status_code == 200
                except httpx.HTTPError:
                    return False

            try:
                # Generous: a loaded 2-core machine can take a minute to migrate and start.
                wait_until(ready, timeout=240, interval=0.5, message="the hub to become ready")
            except AssertionError as exc:
                tail = log_path.read_text(errors="replace")[-3000:]
                raise AssertionError(f"{exc}\n{tail}") from None
            yield LiveHub(settings, base, log_path)
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield instance
        finally:
            instance.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1920, "height": 1080}, locale="zh-CN")
    new_page = context.new_page()
    errors: list[str] = []
    new_page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    new_page.on("pageerror", lambda e: errors.append(str(e)))
    new_page.console_errors = errors
    try:
        yield new_page
    finally:
        context.close()


@pytest.fixture
def screenshot(page: Any, request: pytest.FixtureRequest) -> Callable[[str], Path]:
    folder = ARTIFACTS / re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    folder.mkdir(parents=True, exist_ok=True)

    def take(name: str) -> Path:
        path = folder / f"{name}.png"
        page.screenshot(path=str(path))
        return path

    return take
