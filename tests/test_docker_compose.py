"""docker-compose.yml, checked by the real docker-compose (Debian's 1.29, which validates a
file without a Docker engine; .ci/run installs it), and the containers' secret guard.

There is no Docker engine here, so nothing is started: `docker-compose config` interpolates
and validates the files against the compose schema, and the resolved configuration is then
checked for what issue 7 asks (services, healthchecks, conditions, profiles, no secrets) and
issue 12 (finding 5): each S3-using service has its own MinIO user and only minio/minio-init see
the root credentials, and Dask speaks mutual TLS only (the same environment as `dask_env`).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yml"
GPU = REPO / "docker-compose.gpu.yml"
DEV_ENV = REPO / "docker" / "dev.env"
ENTRYPOINT = REPO / "docker" / "entrypoint.sh"
SECRETS = (
    "POSTGRES_PASSWORD", "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD", "RAY_AUTH_TOKEN",
    "TINYSUB_S3_API_SECRET", "TINYSUB_S3_DASK_WORKER_SECRET", "TINYSUB_S3_RAY_WORKER_SECRET",
)  # fmt: skip
SERVICES = {
    "api", "postgres", "minio", "minio-init", "ray-head", "ray-worker",
    "dask-certs", "dask-scheduler", "dask-worker", "finetune-worker", "dev-seed",
}  # fmt: skip
# The S3 user of each service that uses the object store, and where its secret comes from.
S3_USERS = {
    "api": ("tinysub-api", "TINYSUB_S3_API_SECRET"),
    "dask-worker": ("tinysub-dask-worker", "TINYSUB_S3_DASK_WORKER_SECRET"),
    "ray-worker": ("tinysub-ray-worker", "TINYSUB_S3_RAY_WORKER_SECRET"),
}
DASK_ROLES = {"dask-scheduler": "scheduler", "dask-worker": "worker", "api": "client"}
CERTS = "/run/dask-tls"
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
    assert api["TINYSUB_EXECUTOR_ADDRESS"] == "tls://dask-scheduler:8786"
    assert api["RAY_AUTH_TOKEN"] == services["ray-worker"]["environment"]["RAY_AUTH_TOKEN"]
    assert api["TINYSUB_DEPLOY_PROFILE"] == "production"


def _all_profiles() -> tuple[dict[str, str], dict]:
    env = production_env()
    return env, resolved("--profile", "dev", "--profile", "finetune", env=env)["services"]


def _env(service: dict) -> dict[str, str]:
    return {k: str(v) for k, v in (service.get("environment") or {}).items()}


def _volumes(service: dict) -> dict[str, str]:
    """Named volume -> "target[:mode]" (docker-compose 1.29 prints short strings)."""
    out = {}
    for spec in service.get("volumes") or []:
        source, _, rest = spec.partition(":")
        out[source] = rest
    return out


@needs_compose
def test_only_minio_and_its_init_job_see_the_root_credentials():
    env, services = _all_profiles()
    root = (env["MINIO_ROOT_USER"], env["MINIO_ROOT_PASSWORD"])
    for name, service in services.items():
        values = _env(service).values()
        leaks = [r for r in root if any(r in v for v in values)]
        if name in ("minio", "minio-init"):
            assert len(leaks) == 2, name
        else:
            assert not leaks, f"{name} sees the MinIO root credentials"


@needs_compose
def test_each_service_that_uses_s3_has_its_own_user_and_the_rest_none():
    env, services = _all_profiles()
    for name, service in services.items():
        e = _env(service)
        if name in S3_USERS:
            user, secret = S3_USERS[name]
            assert e["AWS_ACCESS_KEY_ID"] == user, name
            assert e["AWS_SECRET_ACCESS_KEY"] == env[secret], name
            assert e["AWS_ENDPOINT_URL"] == "http://minio:9000", name
        else:
            # The fine-tuning worker pulls through the API; the schedulers run no tasks.
            assert not any(k.startswith("AWS_") for k in e), f"{name} has S3 settings"
    assert {"finetune-worker", "dask-scheduler", "ray-head", "dev-seed"} <= set(services)
    # Only minio-init learns the users' secrets, to create them.
    init = _env(services["minio-init"])
    for _user, secret in S3_USERS.values():
        assert init[secret] == env[secret]
        holders = {n for n, s in services.items() if env[secret] in _env(s).values()}
        assert holders == {"minio-init", *(n for n, u in S3_USERS.items() if u[1] == secret)}
    assert services["minio-init"]["entrypoint"][:2] == ["/bin/sh", "/tinysub/entrypoint.sh"]


@needs_compose
@pytest.mark.parametrize("access_key", [None, "AKIAEXAMPLE0API"])
def test_minio_init_creates_exactly_the_users_the_services_sign_with(tmp_path, access_key):
    """docker/minio-init.sh, run with minio-init's resolved environment (a stand-in `mc`);
    also when an access key is chosen (TINYSUB_S3_API_ACCESS_KEY)."""
    from tests.test_minio_init import FakeMinio

    env = production_env()
    if access_key:
        env["TINYSUB_S3_API_ACCESS_KEY"] = access_key
    services = resolved("--profile", "dev", "--profile", "finetune", env=env)["services"]
    assert _env(services["api"])["AWS_ACCESS_KEY_ID"] == (access_key or "tinysub-api")
    minio = FakeMinio(tmp_path)
    done = minio.run(_env(services["minio-init"]))
    assert done.returncode == 0, done.stderr
    created = {user: secret for user, (secret, _policy) in minio.users().items()}
    signing = [_env(s) for s in services.values()]
    used = {
        e["AWS_ACCESS_KEY_ID"]: e["AWS_SECRET_ACCESS_KEY"]
        for e in signing
        if "AWS_ACCESS_KEY_ID" in e
    }
    assert created == used


@needs_compose
def test_dask_requires_mutual_tls_with_certificates_from_the_init_job():
    from worker.executors.dask_tls import dask_env

    _, services = _all_profiles()
    scheduler, worker = services["dask-scheduler"], services["dask-worker"]
    assert scheduler["command"][:4] == ["dask", "scheduler", "--protocol", "tls"]
    assert worker["command"][2] == "tls://dask-scheduler:8786"
    assert _env(services["api"])["TINYSUB_EXECUTOR_ADDRESS"] == "tls://dask-scheduler:8786"
    for name, role in DASK_ROLES.items():
        e = _env(services[name])
        assert {k: v for k, v in e.items() if k.startswith("DASK_")} == dask_env(CERTS, role)
        assert e["DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"] == "True"
        assert _volumes(services[name])["dask-tls"] == f"{CERTS}:ro", name
    # Nothing else holds a certificate, and only the init job holds the CA's key.
    holders = {n for n, s in services.items() if "dask-tls" in _volumes(s)}
    assert holders == {*DASK_ROLES, "dask-certs"}
    assert {n for n, s in services.items() if "dask-ca" in _volumes(s)} == {"dask-certs"}
    certs = services["dask-certs"]
    assert certs["command"] == ["python", "-m", "worker.executors.dask_tls", CERTS,
                                "--ca-dir", "/var/lib/dask-ca"]  # fmt: skip
    assert certs["restart"] == "no"
    assert scheduler["depends_on"]["dask-certs"] == {"condition": "service_completed_successfully"}
    # The HTTP side (health, dashboard) answers on loopback only: the healthchecks' way in.
    for name, port in (("dask-scheduler", 8787), ("dask-worker", 8789)):
        command = services[name]["command"]
        assert command[command.index("--dashboard-address") + 1] == f"127.0.0.1:{port}"
        assert f"localhost:{port}" in " ".join(services[name]["healthcheck"]["test"])


def test_the_image_prepares_the_certificate_volumes():
    """Named volumes start as a copy of the image's folder: it must exist, owned by the user."""
    lines = (REPO / "Dockerfile").read_text().splitlines()
    chown = next(line for line in lines if "chown tinysub:tinysub" in line).split()
    for folder in (CERTS, "/var/lib/dask-ca"):
        assert folder in chown


def test_the_image_holds_every_package_the_tinysub_command_imports():
    """The image installs from copied folders; a package left out installs nothing under its
    name, and `tinysub` (entry point tinysub.cli.main) fails in every container at start."""
    copied = {
        line.split()[1]
        for line in (REPO / "Dockerfile").read_text().splitlines()
        if line.startswith("COPY ") and not line.startswith("COPY --")
    }
    entry = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]["tinysub"]
    needed = {"storage", "worker", "services", "client", entry.split(".")[0]}
    assert needed <= copied, f"the Dockerfile does not copy {sorted(needed - copied)}"


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
    for name in (n for n in SECRETS if n != "MINIO_ROOT_USER"):
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
    names = ("POSTGRES_PASSWORD", "AWS_SECRET_ACCESS_KEY", "RAY_AUTH_TOKEN", "TINYSUB_TOKEN",
             "MINIO_ROOT_PASSWORD", *(secret for _, secret in S3_USERS.values()))  # fmt: skip
    for name in names:
        done = _guard({name: value})
        assert (done.returncode == 0) is accepted, (name, value, done.stderr)
        assert ("started" in done.stdout) is accepted
