"""Optional OIDC sign-in (issue 7): a Keycloak-style RS256 token, signed by a test key whose JWKS
is read from a file or served on a local port, is accepted as a bearer token and mapped to our
user by its ``preferred_username``; wrong issuer, audience, key, expiry, unknown or disabled users
are refused with 401."""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient
from jwt.algorithms import RSAAlgorithm
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from remote_dx.api.app import create_app
from remote_dx.core import clock
from remote_dx.core.clock import utcnow
from remote_dx.core.models import User
from remote_dx.core.settings import Settings
from tests.support import free_port

ISSUER = "https://sso.example-hospital.cn/realms/yigongti"
AUDIENCE = "remote-dx"
ME = "/api/v1/auth/me"


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _jwks(*keys: tuple[str, rsa.RSAPrivateKey]) -> dict[str, Any]:
    out = []
    for kid, key in keys:
        jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
        out.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})
    return {"keys": out}


def _token(key: rsa.RSAPrivateKey, kid: str = "k1", **claims: Any) -> str:
    now = int(utcnow().timestamp())
    body = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "f3b0c2a4-uuid",
        "preferred_username": "county_reader",
        "iat": now,
        "exp": now + 300,
        **claims,
    }
    return jwt.encode(body, key, algorithm="RS256", headers={"kid": kid})


@pytest.fixture
def signing_key() -> rsa.RSAPrivateKey:
    return _key()


@pytest.fixture
def oidc_client(
    settings: Settings, db: sessionmaker[Session], tmp_path: Path, signing_key
) -> TestClient:
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(_jwks(("k1", signing_key))))
    configured = settings.model_copy(
        update={"oidc_issuer": ISSUER, "oidc_audience": AUDIENCE, "oidc_jwks_file": jwks}
    )
    return TestClient(create_app(configured))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_a_providers_token_signs_in_as_the_mapped_user(oidc_client: TestClient, signing_key):
    response = oidc_client.get(ME, headers=bearer(_token(signing_key)))
    assert response.status_code == 200, response.text
    assert response.json()["username"] == "county_reader"
    assert response.json()["role"] == "reader"  # from our user row, not the token
    # Our own tokens keep working beside it.
    ours = oidc_client.post(
        "/api/v1/auth/token", data={"username": "admin", "password": "demo"}
    ).json()["access_token"]
    assert oidc_client.get(ME, headers=bearer(ours)).json()["username"] == "admin"


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"aud": "another-client"}, "Audience"),
        ({"iss": "https://evil.example/realms/x"}, "invalid token"),
        ({"preferred_username": "nobody"}, "no local user"),
        ({"preferred_username": None}, "preferred_username"),
    ],
)
def test_wrong_claims_are_refused(oidc_client: TestClient, signing_key, change, fragment):
    claims = {k: v for k, v in change.items() if v is not None}
    token = _token(signing_key, **claims)
    if change.get("preferred_username", "") is None:
        body = jwt.decode(token, options={"verify_signature": False})
        body.pop("preferred_username")
        token = jwt.encode(body, signing_key, algorithm="RS256", headers={"kid": "k1"})
    response = oidc_client.get(ME, headers=bearer(token))
    assert response.status_code == 401
    assert fragment in response.json()["detail"]


def test_a_token_signed_by_another_key_or_alg_is_refused(oidc_client: TestClient, signing_key):
    forged = _token(_key())  # same kid, different key
    assert oidc_client.get(ME, headers=bearer(forged)).status_code == 401
    unknown_kid = _token(_key(), kid="k9")
    response = oidc_client.get(ME, headers=bearer(unknown_kid))
    assert response.status_code == 401 and "unknown signing key" in response.json()["detail"]
    body = jwt.decode(_token(signing_key), options={"verify_signature": False})
    hs = jwt.encode(body, "a-shared-secret-of-sufficient-length-000", algorithm="HS256")
    response = oidc_client.get(ME, headers=bearer(hs))
    assert response.status_code == 401 and "not accepted" in response.json()["detail"]


def test_expired_and_disabled_are_refused(
    oidc_client: TestClient, signing_key, db: sessionmaker[Session]
):
    token = _token(signing_key)
    clock.advance(timedelta(minutes=10))
    response = oidc_client.get(ME, headers=bearer(token))
    assert response.status_code == 401 and "expired" in response.json()["detail"]
    clock.reset()
    with db() as session, session.begin():
        session.scalar(select(User).where(User.username == "county_reader")).active = False
    response = oidc_client.get(ME, headers=bearer(_token(signing_key)))
    assert response.status_code == 401 and "disabled" in response.json()["detail"]


class _JWKSHandler(BaseHTTPRequestHandler):
    jwks: ClassVar[dict[str, Any]] = {}
    hits = 0

    def do_GET(self) -> None:
        type(self).hits += 1
        body = json.dumps(type(self).jwks).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: Any) -> None:
        pass


def test_jwks_from_a_url_and_key_rotation(settings: Settings, db: sessionmaker[Session]):
    old, new = _key(), _key()
    handler = type("Handler", (_JWKSHandler,), {"jwks": _jwks(("old", old)), "hits": 0})
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/realms/yigongti/certs"
        configured = settings.model_copy(
            update={"oidc_issuer": ISSUER, "oidc_audience": AUDIENCE, "oidc_jwks_url": url}
        )
        client = TestClient(create_app(configured))
        assert client.get(ME, headers=bearer(_token(old, kid="old"))).status_code == 200
        assert client.get(ME, headers=bearer(_token(old, kid="old"))).status_code == 200
        assert handler.hits == 1  # cached
        # The provider rotates its keys: a new kid makes the hub fetch the set once more.
        handler.jwks = _jwks(("old", old), ("new", new))
        assert client.get(ME, headers=bearer(_token(new, kid="new"))).status_code == 200
        assert handler.hits == 2
    finally:
        server.shutdown()
        server.server_close()
