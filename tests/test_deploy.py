"""The deployment files, checked for structure (no container engine runs in CI): docker-compose.yml
wires PostgreSQL, MinIO and its bucket, the migration, the API and the workers in the right order,
its secrets come from .env and the example values are refused by the server, and the Dockerfile
builds the image the services run. Where Docker is installed, scripts/check-compose.sh also has
`docker compose` validate the file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from adapters.cli import COMMANDS
from adapters.registry.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _env_file() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in (ROOT / ".env.example").read_text().splitlines())
    return {k.strip(): v.strip() for k, v in (p for p in pairs if len(p) == 2) if not k.startswith("#")}


def test_services_and_their_order(compose):
    services = compose["services"]
    assert set(services) == {"db", "minio", "createbucket", "migrate", "api", "worker", "worker-gpu"}
    for name in ("db", "minio", "api"):
        assert services[name]["healthcheck"]["test"], name
    assert services["migrate"]["depends_on"]["db"]["condition"] == "service_healthy"
    assert services["createbucket"]["depends_on"]["minio"]["condition"] == "service_healthy"
    assert "mc mb --ignore-existing" in services["createbucket"]["command"][0]
    for name in ("api", "worker", "worker-gpu"):
        assert services[name]["depends_on"] == {
            "migrate": {"condition": "service_completed_successfully"},
            "createbucket": {"condition": "service_completed_successfully"},
        }, name
    assert "/readyz" in " ".join(services["api"]["healthcheck"]["test"])
    assert services["api"]["ports"] == ["${ADAPTERS_PORT:-8080}:8080"]


def test_the_services_run_commands_the_cli_has(compose):
    for name in ("migrate", "api", "worker", "worker-gpu"):
        command = compose["services"][name]["command"]
        assert command[0] == "adapters" and command[1] in COMMANDS, name
        assert compose["services"][name]["build"]["context"] == "."


def test_the_app_services_share_one_configuration(compose):
    for name in ("migrate", "api", "worker", "worker-gpu"):
        env = compose["services"][name]["environment"]
        assert env["ADAPTERS_DATABASE_URL"].startswith("postgresql://adapters:${POSTGRES_PASSWORD")
        assert env["ADAPTERS_DATABASE_URL"].endswith("@db:5432/adapters")
        assert env["ADAPTERS_STORAGE_URL"].startswith("s3://")
        assert env["ADAPTERS_COMPRESSION"] == "queue"
        assert env["AWS_ENDPOINT_URL"] == "http://minio:9000"
    assert compose["services"]["worker"]["stop_grace_period"] == "2m"  # room for SIGTERM's grace


def test_the_gpu_worker_is_a_profile_that_reserves_an_nvidia_device(compose):
    gpu = compose["services"]["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["environment"]["ADAPTERS_DEVICE"] == "cuda"
    assert "cu" in gpu["build"]["args"]["TORCH_INDEX"].rsplit("/", 1)[1]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert all("profiles" not in s for n, s in compose["services"].items() if n != "worker-gpu")


def test_every_secret_comes_from_env_and_the_examples_are_refused(compose):
    text = (ROOT / "docker-compose.yml").read_text()
    required = set(re.findall(r"\$\{([A-Z_]+):\?", text))
    assert required == {"POSTGRES_PASSWORD", "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"}
    example = _env_file()
    assert required <= set(example)
    env = compose["services"]["api"]["environment"]
    database_url = env["ADAPTERS_DATABASE_URL"].replace(
        "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD in .env}", example["POSTGRES_PASSWORD"]
    )
    settings = Settings(database_url=database_url, AWS_SECRET_ACCESS_KEY=example["MINIO_ROOT_PASSWORD"])
    assert settings.placeholder_secrets() == ["ADAPTERS_DATABASE_URL (its password)", "AWS_SECRET_ACCESS_KEY"]


def test_the_dockerfile_builds_the_package_with_a_chosen_torch():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu" in dockerfile
    assert 'pip install --index-url "${TORCH_INDEX}"' in dockerfile
    for folder in ("registry", "compress", "api", "cli", "migrations"):
        assert f"COPY {folder} {folder}" in dockerfile
    assert "USER adapters" in dockerfile
    assert dockerfile.rstrip().endswith('CMD ["adapters", "serve"]')
