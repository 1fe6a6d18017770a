"""The statistics dashboard in headless Chromium (issue 6 "Proof"): a hub with a simulated county
(through the real workflow), the statistician logs in, the page draws every chart with data and
the tables; a screenshot and the printed PDF are kept as artifacts."""

from __future__ import annotations

from datetime import date

import pytest

from remote_dx.core.db import get_sessionmaker
from remote_dx.simulate import simulate
from remote_dx.storage.factory import get_store
from tests.browser import (  # noqa: F401
    ARTIFACTS,
    VIEWER_DIST,
    browser,
    live_hub,
    page,
    require_viewer,
    screenshot,
)


def test_dashboard_renders_with_data(live_hub, page, screenshot) -> None:  # noqa: F811
    require_viewer()
    if not (VIEWER_DIST / "dashboard.html").is_file():
        pytest.skip("viewer/dist has no dashboard.html: rebuild the viewer (make viewer/dist)")
    settings = live_hub.settings
    report = simulate(
        settings, get_sessionmaker(settings), get_store(settings), county="看板县", code="KB",
        start=date(2026, 1, 28), days=6, seed=4, townships=4, scale=0.1,
    )  # fmt: skip
    assert report.studies > 5
    token = live_hub.token("kb_stats")
    page.goto(live_hub.base + "/dashboard.html")
    page.evaluate(
        "t => { sessionStorage.setItem('rdx.token', t); sessionStorage.setItem('rdx.user', "
        "'kb_stats'); }",
        token,
    )
    page.goto(live_hub.base + "/dashboard.html?from=2026-01-01&to=2026-02-28")
    page.wait_for_selector("#dashboard[data-ready]", timeout=60_000)
    assert page.get_attribute("#dashboard", "data-ready") == "true", page.inner_text("body")
    titles = page.eval_on_selector_all("[data-chart]", "els => els.map(e => e.dataset.chart)")
    assert {"检查量趋势", "各乡镇卫生院检查量", "时效达标率", "医共体网络"} <= set(titles)
    # Every chart drew an SVG with marks in it.
    marks = page.eval_on_selector_all(
        "[data-chart]", "els => els.map(e => e.querySelectorAll('svg path, svg text').length)"
    )
    assert all(n > 5 for n in marks), dict(zip(titles, marks, strict=True))
    received = page.inner_text(".kpi b")
    assert int(received) == report.studies
    assert "看板县人民医院" in page.inner_text("[data-chart='医共体网络']")
    assert page.locator("table.stats").count() >= 7
    screenshot("dashboard")
    pdf = page.pdf(format="A4", landscape=True, print_background=True)
    assert pdf.startswith(b"%PDF")
    out = ARTIFACTS / "test_dashboard_renders_with_data" / "dashboard.pdf"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(pdf)
