"""The reader's work after the first signature, in headless Chromium (issue 5, viewer).

Against a live ``remote-dx serve --demo``: a county reader amends a signed DX report with its
reason; confirms the ECG's preliminary (machine) reading with a corrected heart rate; a senior
county reader gives the second signature to a junior's preliminary report; the provincial reader
answers a consultation the county asked for (会诊); the township technician records who received
a critical result (危急值). Each step is done in the page and checked through the API afterwards.
Screenshots go to ``test-artifacts/``.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pydicom
import pytest

from tests import browser as browser_fixtures
from tests.browser import LiveHub, require_chromium, require_viewer
from tests.support import SAMPLE_STUDIES

browser = browser_fixtures.browser
live_hub = browser_fixtures.live_hub
page = browser_fixtures.page
screenshot = browser_fixtures.screenshot

DX = SAMPLE_STUDIES / "imaging" / "dx_chest_pa_wang_xiaodong_gb18030.dcm"
ECG = SAMPLE_STUDIES / "ecg" / "ecg_12lead_zhang_wei_gb18030.dcm"
TIMEOUT_MS = 90_000
RULES_FILE = Path(__file__).resolve().parent.parent / "sample_studies" / "routing_rules.yaml"
# Chest films described "复核" need a senior's second signature at the county (a test rule put
# in front of the demo rules).
SECOND_SIGNATURE_RULE = """
  - name: county-second-signature
    match:
      modality: [DX]
      description: {regex: "复核"}
    target: {pool: lead_hospital}
    second_signature: true
"""


def _copy(source: Path, folder: Path, name: str, **values: str) -> Path:
    """Another study of the same patient: new UIDs, the given attributes changed."""
    ds = pydicom.dcmread(source)
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        setattr(ds, keyword, f"2.25.{uuid.uuid4().int}")
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    path = folder / f"{name}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def _uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)


@pytest.fixture
def viewer_built() -> None:
    require_chromium()
    require_viewer()


@pytest.fixture
def studies(viewer_built: None, live_hub: LiveHub, tmp_path: Path) -> dict[str, str]:
    admin = live_hub.token("admin")
    rules = RULES_FILE.read_text(encoding="utf-8").replace(
        "rules:\n", "rules:\n" + SECOND_SIGNATURE_RULE.lstrip("\n"), 1
    )
    put = live_hub.api(
        "PUT", "/api/v1/routing/rules", admin, json={"yaml": rules, "comment": "viewer test"}
    )
    assert put.status_code in (200, 201), put.text
    # The demo county has no senior reader (its 主任医师 is a supervisor, who does not sign).
    senior = live_hub.api(
        "POST",
        "/api/v1/admin/users",
        admin,
        json={
            "username": "county_senior",
            "full_name": "县医院副主任医师",
            "role": "reader",
            "institution": "XXXRMYY",
            "password": SENIOR_PASSWORD,
            "modalities": ["DX", "CR"],
            "title": "副主任医师",
        },
    )
    assert senior.status_code == 201, senior.text
    consult = _copy(DX, tmp_path, "consult", AccessionNumber="CONSULT01")
    second = _copy(
        DX, tmp_path, "second", AccessionNumber="SECOND01", StudyDescription="胸部正位 复核"
    )
    live_hub.push([DX, consult, second], calling_ae="XIPING_DR")
    live_hub.push([ECG], calling_ae="XIPING_ECG")
    uids = {"dx": _uid(DX), "consult": _uid(consult), "second": _uid(second), "ecg": _uid(ECG)}
    live_hub.wait_listed(live_hub.token("county_reader"), set(uids.values()))
    return uids


SENIOR_PASSWORD = "senior-reader-2026"


def _login(page: Any, base: str, user: str, password: str = "demo") -> None:
    page.goto(f"{base}/")
    if page.locator("button[name=logout]").count():
        page.click("button[name=logout]")
    page.wait_for_selector("input[name=username]", timeout=TIMEOUT_MS)
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", password)
    page.click("button[name=login]")
    page.wait_for_selector("table.worklist", timeout=TIMEOUT_MS)


def _open(page: Any, base: str, route: str) -> None:
    page.goto(f"{base}/#/{route}")
    page.wait_for_selector(".report-panel", timeout=TIMEOUT_MS)


def _sign_by_api(hub: LiveHub, token: str, uid: str, impression: str) -> dict:
    claimed = hub.api("POST", f"/api/v1/worklist/{uid}/claim", token)
    assert claimed.status_code == 200, claimed.text
    signed = hub.api(
        "POST",
        f"/api/v1/studies/{uid}/report/sign",
        token,
        json={"content": {"findings": "双肺纹理清晰。", "impression": impression}},
    )
    assert signed.status_code == 200, signed.text
    return signed.json()


@pytest.mark.slow
def test_reader_amends_confirms_answers_and_acknowledges(
    viewer_built: None, live_hub: LiveHub, studies: dict[str, str], page: Any, screenshot: Any
) -> None:
    base = live_hub.base
    reader = live_hub.token("county_reader")

    # --- amend a signed report: the reason is required; the old version stays -------------------
    assert _sign_by_api(live_hub, reader, studies["dx"], "心肺未见异常。")["status"] == "final"
    _login(page, base, "county_reader")
    _open(page, base, f"study/{studies['dx']}")
    panel = page.locator(".report-panel")
    assert panel.get_attribute("data-status") == "final"
    assert page.locator(".report-panel textarea[name=impression]").is_disabled()
    page.click(".report-panel button[name=amend]")
    impression = page.locator(".report-panel textarea[name=impression]")
    impression.fill("右下肺小结节，建议 CT 随访。")
    page.click(".report-panel button[name=amend-submit]")  # no reason yet: refused in the page
    page.wait_for_selector(".toast.error", timeout=TIMEOUT_MS)
    page.fill(".report-panel textarea[name=amend-reason]", "复阅发现右下肺结节")
    screenshot("01-amending")
    page.click(".report-panel button[name=amend-submit]")
    page.wait_for_selector("table.worklist", timeout=TIMEOUT_MS)
    report = live_hub.api("GET", f"/api/v1/studies/{studies['dx']}/report", reader).json()
    assert report["status"] == "amended", report
    assert [v["kind"] for v in report["versions"]] == ["final", "amend"]
    assert report["versions"][-1]["reason"] == "复阅发现右下肺结节"
    assert "结节" in report["versions"][-1]["content"]["impression"]
    # Reopened: the history shows both versions and the reason.
    _open(page, base, f"study/{studies['dx']}")
    history = page.locator(".report-panel .versions")
    assert history.locator("li").count() == 2
    assert "复阅发现右下肺结节" in history.inner_text()
    screenshot("02-amended-history")

    # --- confirm the ECG's preliminary (machine) reading, one value corrected ------------------
    _open(page, base, f"ecg/{studies['ecg']}")
    page.wait_for_selector(".analysis input[name=confirm-heart_rate]", timeout=TIMEOUT_MS)
    before = live_hub.api("GET", f"/api/v1/ecg/{studies['ecg']}/analysis", reader).json()
    assert before["confirmed"] is None
    page.fill(".analysis input[name=confirm-heart_rate]", "72")
    page.click(".analysis button[name=ecg-confirm]")
    page.wait_for_selector(".analysis .confirmed-by[data-confirmed=yes]", timeout=TIMEOUT_MS)
    # The report panel beside shows the corrected values, labelled, without retyping.
    findings = ".report-panel textarea[name=findings]"
    page.wait_for_function(
        f"() => document.querySelector('{findings}')?.value.includes('医师确认')",
        timeout=TIMEOUT_MS,
    )
    assert "心率 72 次/分" in page.locator(findings).input_value()
    screenshot("03-ecg-confirmed")
    analysis = live_hub.api("GET", f"/api/v1/ecg/{studies['ecg']}/analysis", reader).json()
    assert analysis["confirmed"]["measurements"]["heart_rate"] == 72
    assert analysis["confirmed"]["confirmed_by"] == "county_reader"
    assert analysis["heart_rate"] == before["heart_rate"]  # the machine's value is kept beside

    # --- the draft moves on under the page (a confirmation made elsewhere): the page's next
    # autosave is refused (409, made from an older revision), takes the newer draft, keeps
    # what the reader typed over it and saves again, without an error -----------------------
    impression = page.locator(".report-panel textarea[name=impression]")
    report_path = f"/api/v1/studies/{studies['ecg']}/report"

    def draft() -> dict[str, Any]:
        return live_hub.api("GET", report_path, reader).json()["draft"]

    def wait_for_draft(check: Any) -> dict[str, Any]:
        deadline = time.monotonic() + TIMEOUT_MS / 1000
        while not check(current := draft()) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert check(current), current
        return current

    impression.fill("窦性心律。")
    saved = wait_for_draft(lambda d: d["saved"] and d["content"]["impression"] == "窦性心律。")
    confirmed = {
        "measurements": {**analysis["confirmed"]["measurements"], "heart_rate": 75},
        "statements": analysis["confirmed"]["statements"],
    }
    elsewhere = live_hub.api(
        "PUT", f"/api/v1/ecg/{studies['ecg']}/confirmed", reader, json=confirmed
    )
    assert elsewhere.status_code == 200, elsewhere.text
    assert draft()["revision"] == saved["revision"] + 1  # carried into the saved draft
    impression.fill("窦性心律，请结合临床。")
    final = wait_for_draft(lambda d: d["content"]["impression"] == "窦性心律，请结合临床。")
    assert "心率 75 次/分" in final["content"]["findings"], final  # not put back to 72
    assert final["revision"] == saved["revision"] + 2
    page.wait_for_function(
        f"() => document.querySelector('{findings}')?.value.includes('心率 75 次/分')",
        timeout=TIMEOUT_MS,
    )
    assert page.locator(".toast.error", has_text="revision").count() == 0

    # --- second signature: the junior's preliminary report, confirmed by a senior ---------------
    junior = _sign_by_api(live_hub, reader, studies["second"], "心影稍大。")
    assert junior["status"] == "preliminary", junior
    # The junior sees it read-only: no confirm button (it would answer 403), a note instead.
    _open(page, base, f"study/{studies['second']}")
    assert page.locator(".report-panel").get_attribute("data-status") == "preliminary"
    page.wait_for_selector(".report-panel .awaiting-senior", timeout=TIMEOUT_MS)
    assert page.locator(".report-panel button[name=confirm]").count() == 0
    assert page.locator(".report-panel textarea[name=impression]").is_disabled()
    _login(page, base, "county_senior", SENIOR_PASSWORD)
    _open(page, base, f"study/{studies['second']}")
    assert page.locator(".report-panel").get_attribute("data-status") == "preliminary"
    page.fill(".report-panel textarea[name=impression]", "心影稍大，请结合临床。")
    screenshot("04-second-signature")
    page.click(".report-panel button[name=confirm]")
    page.wait_for_selector("table.worklist", timeout=TIMEOUT_MS)
    senior_token = live_hub.token("county_senior", SENIOR_PASSWORD)
    report = live_hub.api("GET", f"/api/v1/studies/{studies['second']}/report", senior_token)
    report = report.json()
    assert report["status"] == "final", report
    assert report["confirmed_by"]["name"] == "县医院副主任医师"
    assert [v["kind"] for v in report["versions"]] == ["preliminary", "confirm"]
    assert report["versions"][-1]["content"]["impression"] == "心影稍大，请结合临床。"

    # --- the provincial reader answers the county's consultation --------------------------------
    claimed = live_hub.api("POST", f"/api/v1/worklist/{studies['consult']}/claim", reader)
    assert claimed.status_code == 200, claimed.text
    asked = live_hub.api(
        "POST",
        f"/api/v1/studies/{studies['consult']}/consultations",
        reader,
        json={"question": "右上肺斑片影性质？", "opinion": "考虑炎症"},
    )
    assert asked.status_code == 201, asked.text
    _login(page, base, "province_reader")
    row = page.wait_for_selector(f"tr[data-uid='{studies['consult']}']", timeout=TIMEOUT_MS)
    row.click()
    form = page.wait_for_selector(
        ".report-panel .consultation[data-status=open] textarea[name=consultation-answer]",
        timeout=TIMEOUT_MS,
    )
    assert "右上肺斑片影性质" in page.locator(".report-panel .consultation").inner_text()
    form.fill("符合右上肺炎，建议抗感染后复查。")
    page.click(".report-panel button[name=answer-consultation]")
    page.wait_for_selector(".report-panel .consultation[data-status=answered]", timeout=TIMEOUT_MS)
    screenshot("05-consultation-answered")
    province = live_hub.token("province_reader")
    answers = live_hub.api(
        "GET", f"/api/v1/studies/{studies['consult']}/consultations", province
    ).json()
    assert answers[0]["status"] == "answered"
    assert answers[0]["answer"] == "符合右上肺炎，建议抗感染后复查。"
    assert answers[0]["answered_by"] == "省医院诊断医师"

    # --- the township records who received a critical result -----------------------------------
    raised = live_hub.api(
        "POST",
        f"/api/v1/studies/{studies['ecg']}/alerts",
        reader,
        json={"reasons": [{"text": "急性ST段抬高", "en": "Acute ST elevation"}]},
    )
    assert raised.status_code == 201, raised.text
    alert_id = raised.json()["id"]
    _login(page, base, "tech_xiping")
    open_alerts = live_hub.api(
        "GET", "/api/v1/alerts", live_hub.token("tech_xiping"), params={"unacknowledged": True}
    ).json()["total"]
    badge = page.locator("a[name=nav-alerts] .badge")
    page.wait_for_function(
        "(n) => document.querySelector('a[name=nav-alerts] .badge')?.dataset.count === String(n)",
        arg=open_alerts,
        timeout=TIMEOUT_MS,
    )
    assert open_alerts >= 1 and badge.is_visible()
    page.click("a[name=nav-alerts]")
    row = page.wait_for_selector(f"table.alerts tr[data-id='{alert_id}']", timeout=TIMEOUT_MS)
    assert "急性ST段抬高" in row.inner_text()
    page.click(f"table.alerts tr[data-id='{alert_id}'] button[name=acknowledge]")
    page.fill("input[name=ack-name]", "值班医生 王芳")
    page.fill("input[name=ack-note]", "已电话通知，患者转县医院胸痛中心")
    page.click("button[name=ack-submit]")
    # The list shows unacknowledged alerts only: the acknowledged one leaves it.
    page.wait_for_selector(
        f"table.alerts tr[data-id='{alert_id}']", state="detached", timeout=TIMEOUT_MS
    )
    page.wait_for_function(  # the header's count follows
        "(n) => document.querySelector('a[name=nav-alerts] .badge')?.dataset.count === String(n)",
        arg=open_alerts - 1,
        timeout=TIMEOUT_MS,
    )
    page.uncheck("input[name=unacknowledged]")
    done = page.wait_for_selector(
        f"table.alerts tr.acked[data-id='{alert_id}']", timeout=TIMEOUT_MS
    )
    assert "值班医生 王芳" in done.inner_text()
    screenshot("06-alert-acknowledged")
    alert = live_hub.api("GET", f"/api/v1/alerts/{alert_id}", live_hub.token("tech_xiping")).json()
    assert alert["acknowledged"] and alert["acknowledged_by_name"] == "值班医生 王芳"
    assert alert["acknowledged_by"] == "tech_xiping"
