"""Critical results (危急值, issue 4): a STEMI-like ECG's alert reaches the township, which
acknowledges it by a named person; no name → 422; unacknowledged alerts re-notify as the clock
moves (also from the sweep) and are listed for supervisors with their age; readers raise alerts
while reading; every step timestamped and scoped.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from remote_dx import tasks
from remote_dx.api.app import create_app
from remote_dx.core import clock
from remote_dx.core.models import CriticalAlert
from remote_dx.core.settings import Settings
from remote_dx.worklist.alerts import renotify_unacknowledged
from tests.test_api_worklist import auth, populate
from tests.test_ecg_pipeline import process, stemi_like, upload_csv

USERS = ("tech_xiping", "county_reader", "county_supervisor", "province_reader", "admin")


@pytest.fixture
def client(settings: Settings, db: sessionmaker[Session]) -> TestClient:
    tasks.configure(settings)
    client = TestClient(create_app(settings))
    for username in USERS:  # before any clock move: pyjwt checks "iat" against real time
        auth(client, username)
    return client


def alerts(client: TestClient, username: str, **params) -> dict:
    response = client.get("/api/v1/alerts", headers=auth(client, username), params=params)
    assert response.status_code == 200, response.text
    return response.json()


def acknowledge(client: TestClient, username: str, alert_id: int, **body):
    return client.post(
        f"/api/v1/alerts/{alert_id}/acknowledge", headers=auth(client, username), json=body
    )


def test_stemi_alert_acknowledged_by_a_named_person_at_the_township(
    client: TestClient, settings: Settings, db: sessionmaker[Session]
) -> None:
    study_uid = upload_csv(client, stemi_like(), "STEMI-ACK")
    process(settings, db, study_uid)

    township = alerts(client, "tech_xiping")
    assert township["total"] == 1
    [alert] = township["items"]
    assert alert["study_uid"] == study_uid
    assert alert["source"] == "ecg-analysis"
    assert [r["code"] for r in alert["reasons"]] == ["stemi_suspected"]
    assert alert["origin_code"] == "XIPING" and alert["pool"] == "西峡县人民医院"
    assert alert["acknowledged"] is False and alert["acknowledged_at"] is None
    assert alert["raised_at"].endswith("Z")
    # The pool and its supervisor see it; another pool does not.
    assert [a["id"] for a in alerts(client, "county_reader")["items"]] == [alert["id"]]
    supervisor = alerts(client, "county_supervisor", unacknowledged="true")
    assert [a["id"] for a in supervisor["items"]] == [alert["id"]]
    assert alerts(client, "province_reader") == {"items": [], "total": 0}
    assert acknowledge(client, "province_reader", alert["id"], name="x").status_code == 404

    # The name of the person who took the value is required.
    for body in ({}, {"name": ""}, {"name": "   "}, {"note": "已通知"}):
        refused = acknowledge(client, "tech_xiping", alert["id"], **body)
        assert refused.status_code == 422, body
        assert "name" in refused.json()["detail"]

    clock.advance(timedelta(minutes=3))
    done = acknowledge(
        client,
        "tech_xiping",
        alert["id"],
        name="值班医生 王芳",
        note="已电话通知，患者转县医院胸痛中心",
    )
    assert done.status_code == 200, done.text
    body = done.json()
    assert body["acknowledged"] is True
    assert body["acknowledged_by_name"] == "值班医生 王芳"
    assert body["acknowledged_by"] == "tech_xiping"
    assert body["acknowledgement_note"] == "已电话通知，患者转县医院胸痛中心"
    raised = datetime.fromisoformat(body["raised_at"])
    acknowledged = datetime.fromisoformat(body["acknowledged_at"])
    assert timedelta(minutes=3) <= acknowledged - raised < timedelta(minutes=3, seconds=30)
    assert body["age_seconds"] == pytest.approx((acknowledged - raised).total_seconds(), abs=0.01)

    again = acknowledge(client, "county_reader", alert["id"], name="someone else")
    assert again.status_code == 409
    assert "值班医生 王芳" in again.json()["detail"]
    assert alerts(client, "county_supervisor", unacknowledged="true")["total"] == 0
    assert alerts(client, "county_supervisor", unacknowledged="false")["total"] == 1
    with db() as session:
        stored = session.get(CriticalAlert, alert["id"])
        assert stored.acknowledged_by_name == "值班医生 王芳"
        assert abs(stored.acknowledged_at - acknowledged) < timedelta(milliseconds=1)


def test_reader_raises_an_alert_while_reading(
    client: TestClient, settings: Settings, db: sessionmaker[Session]
) -> None:
    cases = populate(settings, db)
    chest = cases["xp-chest"].study_uid
    body = {"reasons": [{"code": "tension_pneumothorax", "text": "右侧张力性气胸"}]}
    url = f"/api/v1/studies/{chest}/alerts"

    raised = client.post(url, headers=auth(client, "county_reader"), json=body)
    assert raised.status_code == 201, raised.text
    alert = raised.json()
    assert alert["source"] == "reader"
    assert alert["reasons"] == [
        {"code": "tension_pneumothorax", "zh": "右侧张力性气胸", "en": "右侧张力性气胸"}
    ]
    assert alert["patient_name"] == "王^小东"
    # The township that sent the study sees it at once.
    assert [a["id"] for a in alerts(client, "tech_xiping")["items"]] == [alert["id"]]

    assert client.post(url, headers=auth(client, "tech_xiping"), json=body).status_code == 403
    assert client.post(url, headers=auth(client, "province_reader"), json=body).status_code == 404
    empty = client.post(url, headers=auth(client, "county_reader"), json={"reasons": []})
    assert empty.status_code == 422
    one = client.get(f"/api/v1/alerts/{alert['id']}", headers=auth(client, "county_reader"))
    fetched = one.json()
    assert fetched.pop("age_seconds") >= alert.pop("age_seconds")  # still waiting
    assert fetched == alert
    missing = client.get(f"/api/v1/alerts/{alert['id']}", headers=auth(client, "province_reader"))
    assert missing.status_code == 404


def test_unacknowledged_alerts_renotify_and_supervisors_see_their_age(
    client: TestClient, settings: Settings, db: sessionmaker[Session]
) -> None:
    cases = populate(settings, db)
    ids = []
    for key in ("xp-chest", "dh-stat"):
        response = client.post(
            f"/api/v1/studies/{cases[key].study_uid}/alerts",
            headers=auth(client, "county_reader"),
            json={"reasons": [{"text": "危急值"}]},
        )
        assert response.status_code == 201
        ids.append(response.json()["id"])
    assert acknowledge(client, "county_reader", ids[1], name="李医生").status_code == 200

    every = settings.alert_renotify_minutes
    assert every == 5
    clock.advance(timedelta(minutes=every - 1))
    assert renotify_unacknowledged(db, every_minutes=every) == []
    clock.advance(timedelta(minutes=1, seconds=1))
    assert renotify_unacknowledged(db, every_minutes=every) == [ids[0]]  # not the acknowledged
    assert renotify_unacknowledged(db, every_minutes=every) == []  # not twice in a row
    with db() as session:
        first = session.get(CriticalAlert, ids[0])
        assert first.notify_count == 1
        assert clock.utcnow() - first.last_notified_at < timedelta(seconds=5)

    # The sweep does it too, every_minutes after the previous notification.
    clock.advance(timedelta(minutes=every))
    result = tasks.Sweeper(settings, enqueue=lambda _uid: True).run_once()
    assert result.renotified == [ids[0]]

    [pending] = alerts(client, "county_supervisor", unacknowledged="true")["items"]
    assert pending["id"] == ids[0]
    assert pending["notify_count"] == 2
    assert pending["age_seconds"] >= 2 * every * 60
    assert pending["last_notified_at"] > pending["raised_at"]
    with db() as session:
        assert (
            session.scalar(select(CriticalAlert.notify_count).where(CriticalAlert.id == ids[1]))
            == 0
        )
