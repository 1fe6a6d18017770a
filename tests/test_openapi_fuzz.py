"""Schemathesis over the app's own OpenAPI schema (issue 7): generated requests to every
operation, as an administrator (the widest scope), must never get a 5xx.

Bounded: a few examples per operation, derandomised so a failure reproduces. The worklist event
stream (server-sent events, never ends by design) is left out.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from starlette.testclient import TestClient

from remote_dx.api.app import create_app
from remote_dx.core.db import session_scope
from remote_dx.core.migrate import upgrade
from remote_dx.core.network import apply_network, load_network_file
from remote_dx.core.settings import Settings, reset_settings
from tests.conftest import settings_env
from tests.support import DEMO_NETWORK

EXAMPLES = 4


# The schema must exist when the module is collected (one test per operation), so the app is
# made here over a temporary data dir; its database is created by the ``hub`` fixture.
HUB = Settings(
    data_dir=Path(tempfile.mkdtemp(prefix="rdx-openapi-")) / "var",
    jwt_secret="openapi-fuzz-secret-0123456789abcdef",
    login_max_failures=10_000,
    login_max_failures_per_address=10_000,
)
atexit.register(shutil.rmtree, HUB.data_dir.parent, ignore_errors=True)
APP = create_app(HUB)
schema = schemathesis.openapi.from_asgi("/openapi.json", APP).exclude(path_regex=r"/events")


@pytest.fixture(scope="module")
def hub() -> Iterator[Settings]:
    settings = HUB
    upgrade(settings)
    with session_scope(settings) as session:
        apply_network(session, load_network_file(DEMO_NETWORK), with_passwords=True)
    yield settings


@pytest.fixture(autouse=True)
def _hub_env(hub: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # Code deep in a stage reads get_settings(): it must see this hub, never ./var.
    for key, value in settings_env(hub).items():
        monkeypatch.setenv(key, value)
    reset_settings()
    yield


@pytest.fixture(scope="module")
def token(hub: Settings) -> str:
    client = TestClient(APP)
    answer = client.post("/api/v1/auth/token", data={"username": "admin", "password": "demo"})
    assert answer.status_code == 200, answer.text
    return str(answer.json()["access_token"])


@pytest.mark.slow
@schema.parametrize()
@hypothesis_settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_no_server_errors(case, token: str) -> None:
    response = case.call(headers={"Authorization": f"Bearer {token}"})
    assert response.status_code < 500, (
        f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:500]}"
    )


@pytest.fixture
def on_postgresql(tmp_path: Path, postgres_database: str) -> tuple[TestClient, dict[str, str]]:
    """A client of the app on a fresh, seeded PostgreSQL database, and an administrator's
    authorization header. The fuzzing above runs on SQLite, which takes values PostgreSQL's
    columns cannot hold."""
    settings = Settings(
        data_dir=tmp_path / "var", database_url=postgres_database, jwt_secret=HUB.jwt_secret
    )
    upgrade(settings)
    with session_scope(settings) as session:
        apply_network(session, load_network_file(DEMO_NETWORK), with_passwords=True)
    client = TestClient(create_app(settings), raise_server_exceptions=False)
    login = client.post("/api/v1/auth/token", data={"username": "admin", "password": "demo"})
    return client, {"Authorization": f"Bearer {login.json()['access_token']}"}


def _get_operations(client: TestClient) -> Iterator[tuple[str, dict[str, Any]]]:
    for path, operations in client.get("/openapi.json").json()["paths"].items():
        if "get" in operations and not path.endswith("/events"):
            yield path, operations["get"]


def test_a_nul_character_in_any_query_is_refused_on_postgresql(
    on_postgresql: tuple[TestClient, dict[str, str]],
) -> None:
    """SQLite's text holds U+0000; PostgreSQL's cannot, and a %00 in a worklist, audit,
    recognition or statistics filter reached the database and answered 500. Every GET
    operation's query parameters, one at a time: 4xx."""
    client, headers = on_postgresql
    answers: dict[tuple[str, str], int] = {}
    for path, get in _get_operations(client):
        if "{" in path:
            continue
        for parameter in get.get("parameters", []):
            if parameter["in"] == "query":
                name = parameter["name"]
                answer = client.get(path, params={name: "a\x00b"}, headers=headers)
                answers[(path, name)] = answer.status_code
    assert answers[("/api/v1/audit", "user")] == 422  # one that reached the database before
    assert {key: code for key, code in answers.items() if code >= 500} == {}


def test_an_id_beyond_the_database_integer_is_refused_on_postgresql(
    on_postgresql: tuple[TestClient, dict[str, str]],
) -> None:
    """SQLite compares any integer; PostgreSQL cannot cast 2**31 to its integer, and an alert,
    report or user id that large answered 500 (found by this fuzzing run on PostgreSQL).
    Every GET operation with integer path parameters, all set to 2**31: 4xx."""
    client, headers = on_postgresql
    answers: dict[str, int] = {}
    for path, get in _get_operations(client):
        parameters = [p for p in get.get("parameters", []) if p["in"] == "path"]
        if not parameters or any(p.get("schema", {}).get("type") != "integer" for p in parameters):
            continue
        url = path
        for parameter in parameters:
            url = url.replace("{" + parameter["name"] + "}", str(2**31))
        answers[url] = client.get(url, headers=headers).status_code
    assert answers["/api/v1/alerts/2147483648"] == 422
    assert {url: code for url, code in answers.items() if code >= 500} == {}
