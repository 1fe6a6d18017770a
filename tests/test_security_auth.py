"""Logins under attack and tokens under control (issue 7): lock-out per username and per client
address, refresh-token rotation with replay detection, logout, admin user management (disable
stops every token at once), and the ``remote-dx users`` commands."""

from __future__ import annotations

from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from remote_dx.api.app import create_app
from remote_dx.cli import app as cli
from remote_dx.core import clock
from remote_dx.core.settings import Settings

TOKEN = "/api/v1/auth/token"
REFRESH = "/api/v1/auth/refresh"
ME = "/api/v1/auth/me"


@pytest.fixture
def client(settings: Settings, db: sessionmaker[Session]) -> TestClient:
    return TestClient(create_app(settings))


def login(client: TestClient, username: str, password: str = "demo"):
    return client.post(TOKEN, data={"username": username, "password": password})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_username_is_locked_after_repeated_failures_then_unlocks(
    client: TestClient, settings: Settings
) -> None:
    for _ in range(settings.login_max_failures - 1):
        assert login(client, "county_reader", "wrong").status_code == 401
    last = login(client, "county_reader", "wrong")
    assert last.status_code == 401  # the failure that locks is still told as a failure
    locked = login(client, "county_reader")  # even the right password, while locked
    assert locked.status_code == 423
    assert "locked" in locked.json()["detail"]
    retry = int(locked.headers["retry-after"])
    assert 0 < retry <= settings.login_lockout_minutes * 60
    # Other accounts are not affected.
    assert login(client, "county_supervisor").status_code == 200

    clock.advance(timedelta(minutes=settings.login_lockout_minutes, seconds=1))
    assert login(client, "county_reader").status_code == 200


def test_success_forgives_earlier_failures(client: TestClient, settings: Settings) -> None:
    for _ in range(settings.login_max_failures - 1):
        login(client, "county_reader", "wrong")
    assert login(client, "county_reader").status_code == 200
    for _ in range(settings.login_max_failures - 1):
        login(client, "county_reader", "wrong")
    assert login(client, "county_reader").status_code == 200


def test_failures_outside_the_window_do_not_add_up(client: TestClient, settings: Settings) -> None:
    for _ in range(settings.login_max_failures - 1):
        login(client, "county_reader", "wrong")
    clock.advance(timedelta(minutes=settings.login_failure_window_minutes, seconds=1))
    login(client, "county_reader", "wrong")
    assert login(client, "county_reader").status_code == 200


def test_one_address_guessing_many_usernames_is_throttled(
    settings: Settings, db: sessionmaker[Session]
) -> None:
    client = TestClient(
        create_app(settings.model_copy(update={"login_max_failures_per_address": 6}))
    )
    for n in range(6):
        assert login(client, f"guess{n}", "x").status_code == 401
    throttled = login(client, "county_reader")
    assert throttled.status_code == 429
    assert int(throttled.headers["retry-after"]) > 0
    assert "address" in throttled.json()["detail"]


def test_refresh_rotates_and_a_replayed_token_revokes_the_family(client: TestClient) -> None:
    first = login(client, "county_reader").json()
    assert first["refresh_token"] and first["refresh_expires_in"] > first["expires_in"]
    second = client.post(REFRESH, data={"refresh_token": first["refresh_token"]})
    assert second.status_code == 200, second.text
    second = second.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert client.get(ME, headers=bearer(second["access_token"])).json()["username"] == (
        "county_reader"
    )
    # The spent token again: a replay. Refused, and the family (its successor too) is revoked.
    replay = client.post(REFRESH, data={"refresh_token": first["refresh_token"]})
    assert replay.status_code == 401
    assert "already used" in replay.json()["detail"]
    after = client.post(REFRESH, data={"refresh_token": second["refresh_token"]})
    assert after.status_code == 401
    assert "revoked" in after.json()["detail"]
    assert client.post(REFRESH, data={"refresh_token": "garbage"}).status_code == 401


def test_refresh_outlives_the_access_token_but_expires_too(
    client: TestClient, settings: Settings
) -> None:
    issued = login(client, "county_reader").json()
    clock.advance(timedelta(minutes=settings.access_token_minutes, seconds=1))
    assert client.get(ME, headers=bearer(issued["access_token"])).status_code == 401
    renewed = client.post(REFRESH, data={"refresh_token": issued["refresh_token"]})
    assert renewed.status_code == 200
    assert client.get(ME, headers=bearer(renewed.json()["access_token"])).status_code == 200
    clock.advance(timedelta(minutes=settings.refresh_token_minutes, seconds=1))
    expired = client.post(REFRESH, data={"refresh_token": renewed.json()["refresh_token"]})
    assert expired.status_code == 401
    assert "expired" in expired.json()["detail"]


def test_logout_revokes_the_refresh_token(client: TestClient) -> None:
    issued = login(client, "county_reader").json()
    out = client.post(
        "/api/v1/auth/logout",
        headers=bearer(issued["access_token"]),
        data={"refresh_token": issued["refresh_token"]},
    )
    assert out.status_code == 204
    assert client.post(REFRESH, data={"refresh_token": issued["refresh_token"]}).status_code == 401


def test_admin_disables_a_user_and_every_token_stops_at_once(client: TestClient) -> None:
    victim = login(client, "county_reader").json()
    admin = bearer(login(client, "admin").json()["access_token"])
    disabled = client.post("/api/v1/admin/users/county_reader/disable", headers=admin)
    assert disabled.status_code == 200 and disabled.json()["active"] is False
    assert client.get(ME, headers=bearer(victim["access_token"])).status_code == 401
    assert client.post(REFRESH, data={"refresh_token": victim["refresh_token"]}).status_code == 401
    assert login(client, "county_reader").status_code == 401

    assert client.post("/api/v1/admin/users/county_reader/enable", headers=admin).status_code == 200
    again = login(client, "county_reader")
    assert again.status_code == 200
    assert client.get(ME, headers=bearer(again.json()["access_token"])).status_code == 200
    # The old tokens stay dead after re-enabling.
    assert client.get(ME, headers=bearer(victim["access_token"])).status_code == 401
    own = client.post("/api/v1/admin/users/admin/disable", headers=admin)
    assert own.status_code == 409


def test_admin_creates_lists_and_resets_passwords(client: TestClient) -> None:
    admin = bearer(login(client, "admin").json()["access_token"])
    body = {
        "username": "new_reader",
        "full_name": "新医师",
        "role": "senior_reader",
        "institution": "XXXRMYY",
        "password": "a-long-password-1",
        "modalities": ["DX"],
    }
    created = client.post("/api/v1/admin/users", headers=admin, json=body)
    assert created.status_code == 201, created.text
    assert created.json()["role"] == "senior_reader"
    assert client.post("/api/v1/admin/users", headers=admin, json=body).status_code == 409
    bad = client.post(
        "/api/v1/admin/users", headers=admin, json={**body, "username": "x2", "institution": "NOPE"}
    )
    assert bad.status_code == 422
    short = client.post(
        "/api/v1/admin/users", headers=admin, json={**body, "username": "x3", "password": "short"}
    )
    assert short.status_code == 422
    names = [u["username"] for u in client.get("/api/v1/admin/users", headers=admin).json()]
    assert "new_reader" in names and "county_reader" in names

    old = login(client, "new_reader", "a-long-password-1").json()
    reset = client.post("/api/v1/admin/users/new_reader/password", headers=admin, json={})
    assert reset.status_code == 200
    generated = reset.json()["password"]
    assert generated and len(generated) >= 12
    assert client.get(ME, headers=bearer(old["access_token"])).status_code == 401
    assert login(client, "new_reader", "a-long-password-1").status_code == 401
    assert login(client, "new_reader", generated).status_code == 200
    assert client.get("/api/v1/admin/users/nobody", headers=admin).status_code == 404

    reader = bearer(login(client, "county_reader").json()["access_token"])
    refused = client.get("/api/v1/admin/users", headers=reader)
    assert refused.status_code == 403
    assert "admin" in refused.json()["detail"]


def test_admin_unlocks_a_locked_account(client: TestClient, settings: Settings) -> None:
    for _ in range(settings.login_max_failures):
        login(client, "county_reader", "wrong")
    assert login(client, "county_reader").status_code == 423
    admin = bearer(login(client, "admin").json()["access_token"])
    view = client.get("/api/v1/admin/users/county_reader", headers=admin).json()
    assert view["locked"] is True
    assert (
        client.post("/api/v1/admin/users/county_reader/unlock", headers=admin).json()["locked"]
        is False
    )
    assert login(client, "county_reader").status_code == 200


def test_cli_disables_and_sets_passwords(client: TestClient, settings: Settings) -> None:
    token = login(client, "county_reader").json()["access_token"]
    runner = CliRunner()
    args = ["--data-dir", str(settings.data_dir)]
    result = runner.invoke(cli, ["users", "disable", "county_reader", *args])
    assert result.exit_code == 0, result.output
    assert client.get(ME, headers=bearer(token)).status_code == 401
    assert runner.invoke(cli, ["users", "enable", "county_reader", *args]).exit_code == 0
    result = runner.invoke(
        cli, ["users", "password", "county_reader", "--password", "new-password-42", *args]
    )
    assert result.exit_code == 0, result.output
    assert login(client, "county_reader", "new-password-42").status_code == 200
    assert runner.invoke(cli, ["users", "disable", "nobody", *args]).exit_code == 1


def test_a_token_is_verified_once_but_its_expiry_is_checked_on_every_use(
    client: TestClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import jwt

    from remote_dx.api import security

    token = login(client, "county_reader").json()["access_token"]
    verified = []
    real_decode = jwt.decode
    monkeypatch.setattr(
        security.jwt, "decode", lambda *a, **kw: verified.append(a[0]) or real_decode(*a, **kw)
    )
    for _ in range(3):
        assert client.get(ME, headers=bearer(token)).status_code == 200
    assert verified.count(token) <= 1  # the signature is checked at most once per token
    # The same claims signed with another secret are not taken for the remembered token.
    claims = real_decode(token, options={"verify_signature": False})
    forged = jwt.encode(claims, "another-secret-0123456789abcdef0123456789", algorithm="HS256")
    assert client.get(ME, headers=bearer(forged)).status_code == 401
    clock.advance(timedelta(minutes=settings.access_token_minutes, seconds=1))
    expired = client.get(ME, headers=bearer(token))
    assert expired.status_code == 401
    assert "expired" in expired.json()["detail"]
