"""Login (OAuth2 password flow) and bearer-token checks of the API (issue 2, item 6)."""

from __future__ import annotations

import stat
from datetime import timedelta

import jwt
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from remote_dx.api.app import create_app
from remote_dx.api.security import secret_path
from remote_dx.core import clock
from remote_dx.core.models import Role, User
from remote_dx.core.security import hash_password
from remote_dx.core.settings import Settings

TOKEN_URL = "/api/v1/auth/token"
WORKLIST = "/api/v1/worklist"
ME = "/api/v1/auth/me"


@pytest.fixture
def client(settings: Settings, db: sessionmaker[Session]) -> TestClient:
    return TestClient(create_app(settings))


def login(client: TestClient, username: str, password: str = "demo"):
    return client.post(TOKEN_URL, data={"username": username, "password": password})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_demo_reader_gets_a_working_bearer_token(client: TestClient, settings: Settings) -> None:
    response = login(client, "county_reader")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == settings.access_token_minutes * 60
    claims = jwt.decode(body["access_token"], settings.jwt_secret, algorithms=["HS256"])
    assert claims["name"] == "county_reader"
    assert claims["exp"] - claims["iat"] == body["expires_in"]

    listing = client.get(WORKLIST, headers=bearer(body["access_token"]))
    assert listing.status_code == 200, listing.text
    assert listing.json() == {"items": [], "total": 0}


@pytest.mark.parametrize(
    ("username", "password"),
    [("county_reader", "wrong"), ("county_reader", ""), ("nobody", "demo"), ("", "")],
)
def test_bad_credentials_are_refused_with_a_message(
    client: TestClient, username: str, password: str
) -> None:
    response = login(client, username, password)
    if username and password:
        assert response.status_code == 401
        assert response.json() == {"detail": "incorrect username or password"}
        assert response.headers["www-authenticate"] == "Bearer"
    else:
        # Missing form fields are bad input: a 4xx naming the field, never a 500.
        assert response.status_code == 422
        assert "field" in response.json()["detail"]


def test_unknown_user_and_wrong_password_answer_alike(client: TestClient) -> None:
    assert login(client, "nobody").json() == login(client, "county_reader", "x").json()


def test_inactive_user_cannot_log_in_and_existing_tokens_stop_working(
    client: TestClient, db: sessionmaker[Session]
) -> None:
    token = login(client, "tech_xiping").json()["access_token"]
    assert client.get(WORKLIST, headers=bearer(token)).status_code == 200

    with db() as session, session.begin():
        session.scalar(select(User).where(User.username == "tech_xiping")).active = False

    refused = login(client, "tech_xiping")
    assert refused.status_code == 401
    assert "disabled" in refused.json()["detail"]
    stale = client.get(WORKLIST, headers=bearer(token))
    assert stale.status_code == 401
    assert "disabled" in stale.json()["detail"]
    # Without the right password, a disabled account looks like any failed login.
    assert login(client, "tech_xiping", "guess").json()["detail"] == (
        "incorrect username or password"
    )


@pytest.mark.parametrize(
    ("username", "senior"),
    [
        ("province_reader", True),  # a reader titled 主任医师
        ("county_senior", True),  # role senior_reader, no title
        ("county_reader", False),  # a reader titled 主治医师: a junior
        ("county_supervisor", False),  # 主任医师, but a supervisor does not sign
    ],
)
def test_me_says_whether_the_user_may_give_the_second_signature(
    client: TestClient, db: sessionmaker[Session], username: str, senior: bool
) -> None:
    """The viewer offers the confirm button of a preliminary report only when this says so."""
    with db() as session, session.begin():
        county = session.scalar(select(User).where(User.username == "county_reader")).institution
        session.add(
            User(
                username="county_senior",
                full_name="县医院高级医师",
                password_hash=hash_password("demo"),
                role=Role.SENIOR_READER,
                institution_id=county.id,
            )
        )
    token = login(client, username).json()["access_token"]
    me = client.get(ME, headers=bearer(token))
    assert me.status_code == 200, me.text
    assert me.json()["username"] == username
    assert me.json()["senior"] is senior


@pytest.mark.parametrize(
    ("headers", "fragment"),
    [
        ({}, "not authenticated"),
        ({"Authorization": "Bearer"}, "not authenticated"),
        ({"Authorization": "Basic Y291bnR5X3JlYWRlcjpkZW1v"}, "not authenticated"),
        ({"Authorization": "Bearer garbage"}, "invalid token"),
        ({"Authorization": "Bearer a.b.c"}, "invalid token"),
    ],
)
def test_missing_or_garbage_token_is_401(
    client: TestClient, headers: dict[str, str], fragment: str
) -> None:
    response = client.get(WORKLIST, headers=headers)
    assert response.status_code == 401
    assert fragment in response.json()["detail"]
    assert response.headers["www-authenticate"] == "Bearer"


def test_forged_and_foreign_tokens_are_401(client: TestClient, settings: Settings) -> None:
    good = jwt.decode(
        login(client, "admin").json()["access_token"],
        settings.jwt_secret,
        algorithms=["HS256"],
    )
    forged = jwt.encode(good, "another-secret-of-sufficient-length-0123456789", "HS256")
    unsigned = jwt.encode(good, None, algorithm="none")
    wrong_user = jwt.encode({**good, "sub": "999999"}, settings.jwt_secret, "HS256")
    not_access = jwt.encode({**good, "typ": "refresh"}, settings.jwt_secret, "HS256")
    for token in (forged, unsigned, wrong_user, not_access):
        response = client.get(WORKLIST, headers=bearer(token))
        assert response.status_code == 401, token
        assert response.json()["detail"].startswith("invalid token")


def test_expired_token_is_401(client: TestClient, settings: Settings) -> None:
    token = login(client, "county_reader").json()["access_token"]
    clock.advance(timedelta(minutes=settings.access_token_minutes) - timedelta(seconds=5))
    assert client.get(WORKLIST, headers=bearer(token)).status_code == 200
    clock.advance(timedelta(seconds=10))
    response = client.get(WORKLIST, headers=bearer(token))
    assert response.status_code == 401
    assert response.json()["detail"] == "token has expired; log in again"


def test_generated_secret_is_persisted_private_and_shared(
    settings: Settings, db: sessionmaker[Session]
) -> None:
    no_secret = settings.model_copy(update={"jwt_secret": ""})
    assert not secret_path(no_secret).exists()
    first = TestClient(create_app(no_secret))
    path = secret_path(no_secret)
    assert path.is_file()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    secret = path.read_text()
    assert len(secret) >= 32

    # A second process of the same install (here: a second app) reuses it, so tokens issued by
    # either are accepted by both.
    second = TestClient(create_app(no_secret))
    assert path.read_text() == secret
    token_1 = login(first, "county_reader").json()["access_token"]
    token_2 = login(second, "province_reader").json()["access_token"]
    assert second.get(WORKLIST, headers=bearer(token_1)).status_code == 200
    assert first.get(WORKLIST, headers=bearer(token_2)).status_code == 200

    # An install with its own secret does not accept them.
    other = TestClient(create_app(settings))
    assert other.get(WORKLIST, headers=bearer(token_1)).status_code == 401


def test_token_issued_on_an_advanced_clock_is_valid(client) -> None:
    """Tests move the project's clock; a token issued "in the future" of the real clock works."""
    from datetime import timedelta

    from remote_dx.core import clock

    clock.advance(timedelta(hours=3))
    token = client.post(
        "/api/v1/auth/token", data={"username": "county_reader", "password": "demo"}
    ).json()["access_token"]
    response = client.get("/api/v1/worklist", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
