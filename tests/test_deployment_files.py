"""The scale-out files (docker-compose.yml, Dockerfile) cannot drift from the code.

No container engine runs here, so they are kept correct by reading: every ``RDX_`` variable the
compose file sets must be a real :class:`Settings` field and parse to what scale-out needs, every
command must be a real ``remote-dx`` command, and the services must be wired to each other.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import make_url

from remote_dx.cli import app as cli_app
from remote_dx.core.settings import Settings
from tests.support import ROOT

COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
APP_SERVICES = ("migrate", "api", "scp", "worker")
# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}
_INTERPOLATION = re.compile(r"\$\{(\w+)(?:(:?-)([^}]*)|(:?\?)([^}]*))?\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def _resolve(value: object) -> str:
    """A compose value with its interpolations replaced by their defaults (a placeholder of
    32+ characters where compose would insist on the variable, e.g. the JWT secret)."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(2) is not None:
            return match.group(3)
        return "x" * 48

    return _INTERPOLATION.sub(substitute, str(value)).replace("$$", "$")


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): _resolve(v) for k, v in env.items()}


def _commands() -> set[str]:
    names = set()
    for command in cli_app.registered_commands:
        name = command.name or (command.callback.__name__ if command.callback else "")
        names.add(name.replace("_", "-"))
    return names


def test_services_exist(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"postgres", "redis", "minio", *APP_SERVICES} <= set(services)
    assert services["postgres"]["image"].startswith("postgres:16")
    assert services["redis"]["image"].startswith("redis:7")
    assert services["minio"]["image"].startswith("minio/minio")


@pytest.mark.parametrize("name", APP_SERVICES)
def test_rdx_variables_are_settings_fields(compose: dict[str, Any], name: str) -> None:
    env = _environment(compose["services"][name])
    rdx = {k: v for k, v in env.items() if k.startswith("RDX_")}
    assert rdx, f"{name} sets no RDX_ variable"
    fields = set(Settings.model_fields)
    unknown = sorted(k for k in rdx if k.removeprefix("RDX_").lower() not in fields)
    assert not unknown, f"{name}: not Settings fields: {unknown}"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_environment_parses_to_scale_out_settings(
    compose: dict[str, Any], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    services = compose["services"]
    for key, value in _environment(services[name]).items():
        monkeypatch.setenv(key, value)
    settings = Settings()  # raises if any value does not parse
    assert not settings.is_sqlite
    db = make_url(settings.database_url)
    assert db.drivername == "postgresql+psycopg"
    assert db.host in services and db.database == services["postgres"]["environment"]["POSTGRES_DB"]
    assert settings.storage_backend == "s3"
    assert settings.s3_endpoint.split(":")[0] in services
    minio_env = _environment(services["minio"])
    assert settings.s3_access_key == minio_env["MINIO_ROOT_USER"]
    assert settings.s3_secret_key == minio_env["MINIO_ROOT_PASSWORD"]
    assert db.password == _environment(services["postgres"])["POSTGRES_PASSWORD"]
    assert settings.broker_url.startswith("redis://")
    assert settings.broker_url.split("//")[1].split(":")[0] in services
    assert settings.broker_visibility_timeout < 3600
    assert settings.embedded_worker is False
    assert len(settings.jwt_secret) >= 32


def test_every_app_service_runs_a_real_command(compose: dict[str, Any]) -> None:
    commands = _commands()
    expected = {"api": "api", "scp": "scp", "worker": "worker", "migrate": "migrate"}
    for service, command in expected.items():
        line = compose["services"][service]["command"]
        text = " ".join(line) if isinstance(line, list) else line
        assert f"remote-dx {command}" in text, f"{service} does not run `remote-dx {command}`"
        assert command in commands, f"`remote-dx {command}` is not a CLI command"


def test_wiring(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("api", "scp", "worker"):
        service = services[name]
        assert service["image"] == services["migrate"]["image"], "one image for every role"
        assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert "healthcheck" in service
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["migrate"].get("restart") == "no"
    assert services["worker"]["deploy"]["replicas"] >= 1
    assert any(str(p).endswith("8000:8000") for p in services["api"]["ports"])
    assert any(str(p).endswith("11112:11112") for p in services["scp"]["ports"])
    for name in ("postgres", "redis", "minio"):
        assert "healthcheck" in services[name]
    for volume in ("pgdata", "redisdata", "miniodata"):
        assert volume in compose["volumes"]


def test_dockerfile() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    lines = [
        line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")
    ]
    # Multi-stage: node builds the viewer, the last stage is the Python image that runs.
    stages = [line.split() for line in lines if line.startswith("FROM ")]
    assert stages[-1] == ["FROM", "python:3.11-slim"]
    builders = {words[3] for words in stages if len(words) == 4 and words[2].upper() == "AS"}
    assert "viewer" in builders and "RUN npm run build" in lines
    assert "COPY --from=viewer /viewer/dist ./viewer/dist" in lines
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0"), "the image must not run as root"
    exposed = {p for line in lines if line.startswith("EXPOSE ") for p in line.split()[1:]}
    assert {"8000", "11112"} <= exposed
    assert lines[-1] == 'CMD ["remote-dx", "api"]'
    assert any(line.startswith("RUN pip install .") for line in lines)
    # What the image copies must exist, and the demo network must survive .dockerignore.
    for line in lines:
        if line.startswith("COPY ") and not line.startswith("COPY --from="):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), f"Dockerfile copies missing {source}"
    ignore = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    assert {".venv", "var", ".git"} <= set(ignore)
    assert "!sample_studies/demo_network.yaml" in ignore


def test_deployment_guide_mentions_every_service(compose: dict[str, Any]) -> None:
    guide = (ROOT / "docs" / "deployment.md").read_text(encoding="utf-8")
    for name in compose["services"]:
        assert f"`{name}`" in guide, f"docs/deployment.md does not mention {name}"
