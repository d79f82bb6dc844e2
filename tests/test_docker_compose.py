"""docker-compose.yml, checked by the real docker-compose (Debian's 1.29, which validates a
file without a Docker engine; .ci/run installs it), and the containers' secret guard.

There is no Docker engine here, so nothing is started: `docker-compose config` interpolates
and validates the files against the compose schema, and the resolved configuration is then
checked for what issue 7 asks (services, healthchecks, conditions, profiles, no secrets).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yml"
GPU = REPO / "docker-compose.gpu.yml"
DEV_ENV = REPO / "docker" / "dev.env"
ENTRYPOINT = REPO / "docker" / "entrypoint.sh"
SECRETS = ("POSTGRES_PASSWORD", "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD", "RAY_AUTH_TOKEN")
SERVICES = {
    "api", "postgres", "minio", "minio-init", "ray-head", "ray-worker",
    "dask-scheduler", "dask-worker", "finetune-worker", "dev-seed",
}  # fmt: skip
LONG_RUNNING = {"api", "postgres", "minio", "ray-head", "ray-worker", "dask-scheduler",
                "dask-worker"}  # fmt: skip

docker_compose = shutil.which("docker-compose")
needs_compose = pytest.mark.skipif(
    docker_compose is None,
    reason="docker-compose is not installed (apt-get install docker-compose; .ci/run does)",
)


def production_env() -> dict[str, str]:
    """A clean environment with real-looking secrets (nothing inherited from this shell)."""
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")}
    env.update({name: f"{name.lower()}-0123456789abcdef" for name in SECRETS})
    return env


def compose(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [docker_compose, "--project-directory", str(REPO), "-f", str(COMPOSE), *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def resolved(*args: str, env: dict[str, str]) -> dict:
    yaml = pytest.importorskip("yaml")
    done = compose(*args, "config", env=env)
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


@needs_compose
def test_config_is_valid_with_secrets_from_the_environment():
    done = compose("config", "-q", env=production_env())
    assert done.returncode == 0, done.stderr


@needs_compose
def test_gpu_override_and_every_profile_are_valid():
    args = ["-f", str(GPU), "--profile", "dev", "--profile", "finetune", "config", "-q"]
    done = compose(*args, env=production_env())
    assert done.returncode == 0, done.stderr


@needs_compose
@pytest.mark.parametrize("missing", SECRETS)
def test_each_secret_is_required(missing):
    env = production_env()
    del env[missing]
    done = compose("config", "-q", env=env)
    assert done.returncode != 0 and f"set {missing}" in done.stderr


@needs_compose
def test_dev_env_file_is_valid():
    done = compose(
        "--env-file", str(DEV_ENV), "--profile", "dev", "config", "-q", env=production_env()
    )
    assert done.returncode == 0, done.stderr


@needs_compose
def test_topology():
    cfg = resolved("--profile", "dev", "--profile", "finetune", env=production_env())
    services = cfg["services"]
    assert set(services) == SERVICES
    for name in LONG_RUNNING:
        assert services[name]["healthcheck"]["test"], name
        assert services[name]["restart"] == "unless-stopped", name
    # Everything waits on what it needs, healthy or (for the bucket job) completed.
    assert services["api"]["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "minio-init": {"condition": "service_completed_successfully"},
        "dask-scheduler": {"condition": "service_healthy"},
        "ray-head": {"condition": "service_healthy"},
    }
    assert services["minio-init"]["depends_on"] == {"minio": {"condition": "service_healthy"}}
    for worker in ("dask-worker", "ray-worker"):
        assert "container_name" not in services[worker]  # --scale needs generated names
        assert "ports" not in services[worker]
    assert services["finetune-worker"]["depends_on"] == {"api": {"condition": "service_healthy"}}
    assert services["finetune-worker"]["profiles"] == ["finetune"]
    assert services["dev-seed"]["profiles"] == ["dev"]
    # One image for everything that runs tinysub code (workers unpickle the registry's tasks).
    ours = {n for n, s in services.items() if "build" in s}
    assert ours == SERVICES - {"postgres", "minio", "minio-init"}
    assert {services[n]["image"] for n in ours} == {"tinysub:latest"}
    api = services["api"]["environment"]
    assert api["TINYSUB_DATABASE_URL"].startswith("postgresql+psycopg://tinysub:")
    assert api["TINYSUB_DATABASE_URL"].endswith("@postgres:5432/tinysub")
    assert api["TINYSUB_STORE_ROOT"] == "s3://tinysub/registry"
    assert api["TINYSUB_EXECUTOR_ADDRESS"] == "tcp://dask-scheduler:8786"
    assert api["RAY_AUTH_TOKEN"] == services["ray-worker"]["environment"]["RAY_AUTH_TOKEN"]
    assert api["TINYSUB_DEPLOY_PROFILE"] == "production"


def test_no_secret_is_written_in_the_compose_files():
    """Every value of a secret-like key is an interpolation of an environment variable."""
    secret_key = re.compile(r"^\s*([A-Z_]*(PASSWORD|SECRET|TOKEN|_USER)[A-Z_]*):\s*(.*)$")
    for path in (COMPOSE, GPU):
        for line in path.read_text().splitlines():
            m = secret_key.match(line)
            if m and m.group(1) != "RAY_AUTH_MODE":
                assert m.group(3).startswith("${"), f"{path.name}: {line.strip()}"


def _guard(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["sh", str(ENTRYPOINT), "echo", "started"],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def _dev_values() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in DEV_ENV.read_text().splitlines())
    return {k: v for k, v in (p for p in pairs if len(p) == 2 and not p[0].startswith("#"))}


def test_dev_secrets_are_refused_outside_the_dev_profile():
    dev = _dev_values()
    assert dev["TINYSUB_DEPLOY_PROFILE"] == "dev"
    for name in ("POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "RAY_AUTH_TOKEN"):
        done = _guard({name: dev[name], "TINYSUB_DEPLOY_PROFILE": "production"})
        assert done.returncode == 64 and "placeholder" in done.stderr, name
        assert "started" not in done.stdout
    assert _guard(dev).stdout.strip() == "started"  # the dev profile takes them


@pytest.mark.parametrize(
    ("value", "accepted"),
    [
        ("6f1c2e9a0b7d4c3e8f5a", True),
        ("short-secret", False),
        ("changeme-changeme-changeme", False),
        ("minioadmin", False),
        ("dev-only-but-very-long-indeed", False),
    ],
)
def test_guard_checks_each_secret(value, accepted):
    for name in ("POSTGRES_PASSWORD", "AWS_SECRET_ACCESS_KEY", "RAY_AUTH_TOKEN", "TINYSUB_TOKEN"):
        done = _guard({name: value})
        assert (done.returncode == 0) is accepted, (name, value, done.stderr)
        assert ("started" in done.stdout) is accepted
