"""``/api/v1/stats/…`` over HTTP: who may see what, the JSON tables, CSV and XLSX exports, and the
recording of a recognised result's re-use. Figures come from the hand-checked scenario of
:mod:`tests.test_stats_scenario` (see tests/test_stats.py for the figures themselves)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from openpyxl import load_workbook
from sqlalchemy.orm import Session, sessionmaker

from remote_dx.api.app import create_app
from remote_dx.core.settings import Settings
from remote_dx.stats.queries import TABLES
from remote_dx.storage.factory import get_store
from tests.test_ecg_upload_api import auth
from tests.test_stats_scenario import Scenario, build


@pytest.fixture
def hub(settings: Settings, db: sessionmaker[Session]) -> Iterator[tuple[TestClient, Scenario]]:
    scenario = build(settings, db, get_store(settings))
    yield TestClient(create_app(settings)), scenario


def test_roles_and_scope(hub: tuple[TestClient, Scenario]) -> None:
    client, _ = hub
    assert client.get("/api/v1/stats/volumes").status_code == 401
    refused = client.get("/api/v1/stats/volumes", headers=auth(client, "tech_xiping"))
    assert refused.status_code == 403 and "statistics" in refused.json()["detail"]
    everything = client.get(
        "/api/v1/stats/volumes?period=all", headers=auth(client, "statistician")
    ).json()
    assert everything["rows"][0]["received"] == 7
    # A county reader sees their pool only (A, B, C, F), and cannot ask for another pool.
    county = auth(client, "county_reader")
    mine = client.get("/api/v1/stats/volumes?period=all", headers=county).json()
    assert mine["rows"][0]["received"] == 4
    other = client.get("/api/v1/stats/volumes?period=all&pool=HNSRMYY", headers=county)
    assert other.status_code == 403
    province = client.get(
        "/api/v1/stats/volumes?period=all", headers=auth(client, "province_reader")
    )
    assert province.json()["rows"][0]["received"] == 1


def test_tables_json_and_bad_input(hub: tuple[TestClient, Scenario]) -> None:
    client, _ = hub
    headers = auth(client, "statistician")
    listed = client.get("/api/v1/stats/tables", headers=headers).json()
    assert [t["name"] for t in listed] == list(TABLES)
    tat = client.get(
        "/api/v1/stats/turnaround?period=month&from=2026-01-01&to=2026-01-31", headers=headers
    ).json()
    assert [r["period"] for r in tat["rows"]] == ["2026-01"]
    assert tat["rows"][0]["tat_median_min"] == pytest.approx(80.0, abs=0.05)
    assert tat["columns"][0] == {
        "key": "period",
        "label": "月",
        "label_en": "month",
        "kind": "text",
    }
    towns = client.get("/api/v1/stats/quality?period=all&by=township", headers=headers).json()
    assert {r["label"]: r["sent_back"] for r in towns["rows"]} == {
        "西坪镇卫生院": 0,
        "丁河镇卫生院": 1,
    }
    dash = client.get("/api/v1/stats/dashboard?period=month", headers=headers).json()
    assert [t["name"] for t in dash["tables"]] == list(TABLES)
    tree = client.get("/api/v1/stats/network", headers=headers).json()
    assert tree["roots"][0]["value"] == 7
    for bad, fragment in (
        ("/api/v1/stats/nope", "unknown table"),
        ("/api/v1/stats/volumes?period=hour", "period"),
        ("/api/v1/stats/volumes?by=village", "by"),
        ("/api/v1/stats/volumes?from=2026-02-01&to=2026-01-01", "before"),
        ("/api/v1/stats/volumes?format=pdf", "format"),
        ("/api/v1/stats/volumes?county=NOPE", "county"),
        ("/api/v1/stats/volumes?from=yesterday", "from"),
    ):
        answer = client.get(bad, headers=headers)
        assert 400 <= answer.status_code < 500, (bad, answer.status_code)
        assert fragment in answer.json()["detail"], (bad, answer.json())


def test_csv_and_xlsx_exports(hub: tuple[TestClient, Scenario]) -> None:
    client, _ = hub
    headers = auth(client, "statistician")
    answer = client.get("/api/v1/stats/volumes?period=month&format=csv", headers=headers)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/csv")
    assert answer.content.startswith(b"\xef\xbb\xbf")  # BOM: Excel reads it as UTF-8
    lines = list(csv.reader(io.StringIO(answer.content.decode("utf-8-sig"))))
    assert lines[0][:3] == ["月", "接收检查数", "已诊断数"]
    assert lines[1][:3] == ["2026-01", "2", "2"] and lines[2][:3] == ["2026-02", "5", "3"]

    for name in TABLES:
        sheet = client.get(f"/api/v1/stats/{name}/export?format=xlsx&by=township", headers=headers)
        assert sheet.status_code == 200, (name, sheet.text)
        book = load_workbook(io.BytesIO(sheet.content))
        assert book.worksheets[0].max_row >= 1
    whole = client.get("/api/v1/stats/dashboard?format=xlsx", headers=headers)
    book = load_workbook(io.BytesIO(whole.content))
    assert len(book.sheetnames) == len(TABLES) + 1  # + the network
    volumes = book["检查量与诊断量"]
    assert [c.value for c in volumes[2]][:3] == ["2026-01", 2, 2]
    assert (
        client.get("/api/v1/stats/volumes/export?format=json", headers=headers).status_code == 422
    )


def test_recognition_use_recorded_once(hub: tuple[TestClient, Scenario]) -> None:
    client, scenario = hub
    tech = auth(client, "tech_xiping")
    code = scenario.verify_codes["B"]
    first = client.post(f"/api/v1/recognition/{code}/use", headers=tech)
    assert first.status_code == 201, first.text
    again = client.post(f"/api/v1/recognition/{code}/use", headers=tech)
    assert again.status_code == 200 and again.json()["created"] is False
    assert client.post("/api/v1/recognition/ZZZZZZZZ/use", headers=tech).status_code == 404
    refused = client.post(f"/api/v1/recognition/{code}/use", headers=auth(client, "statistician"))
    assert refused.status_code == 403
    table = client.get(
        "/api/v1/stats/recognition?period=all&by=township", headers=auth(client, "statistician")
    ).json()
    assert {r["label"]: r["exams_avoided"] for r in table["rows"]} == {
        "西坪镇卫生院": 1,
        "丁河镇卫生院": 1,
    }
