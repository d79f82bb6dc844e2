"""The scripts the containers run, run here against a real registry (no Docker needed):
docker/dev-seed.sh (the dev profile's one-shot) and docker/finetune-example.sh (the example
fine-tuning worker), each behind docker/entrypoint.sh as in the image.

The image puts `tinysub`, `python3` and `tinysub-finetune-check` on PATH; here small shims do,
running this checkout with this interpreter.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from services.local import REPO, LocalServer

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(240)]

DOCKER = REPO / "docker"


def _shims(bindir: Path) -> None:
    bindir.mkdir()
    scripts = {
        "tinysub": f'exec "{sys.executable}" -m tinysub.cli.main "$@"',
        "python3": f'exec "{sys.executable}" "$@"',
        "tinysub-finetune-check": f'exec "{sys.executable}" "{DOCKER / "finetune_example.py"}"',
    }
    for name, body in scripts.items():
        path = bindir / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(path.stat().st_mode | stat.S_IXUSR)


def _run(script: str, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["sh", str(DOCKER / "entrypoint.sh"), "sh", str(DOCKER / script)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_dev_seed_then_finetune_worker(tmp_path, local_postgres):
    if local_postgres is not None:
        database_url = local_postgres.create_database("container_scripts")
    else:
        database_url = f"sqlite:///{tmp_path / 'registry.db'}"
    _shims(tmp_path / "bin")
    server = LocalServer(tmp_path / "registry", {"TINYSUB_DATABASE_URL": database_url})
    base = {
        "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "PYTHONPATH": str(REPO),
        "TINYSUB_URL": server.url,
        "TINYSUB_DATABASE_URL": database_url,
        "TINYSUB_DATA_DIR": str(tmp_path / "registry"),
        "TINYSUB_DEV_TOKEN_FILE": str(tmp_path / "admin-token"),
        "TINYSUB_CACHE": str(tmp_path / "cache"),
        "TINYSUB_DEVICE": "cpu",
    }
    dev = {**base, "TINYSUB_DEPLOY_PROFILE": "dev", "TINYSUB_DEV_EPOCHS": "4"}
    try:
        server.start()
        # Outside the dev profile the seed job refuses to run at all.
        refused = _run("dev-seed.sh", {**base, "TINYSUB_DEPLOY_PROFILE": "production"})
        assert refused.returncode == 64 and "dev profile" in refused.stderr

        seeded = _run("dev-seed.sh", dev)
        assert seeded.returncode == 0, seeded.stdout[-2000:] + seeded.stderr[-3000:]
        assert "task demo has a ready task basis" in seeded.stdout
        token = (tmp_path / "admin-token").read_text().strip()
        assert token
        again = _run("dev-seed.sh", dev)  # idempotent: no second task, no second basis
        assert again.returncode == 0, again.stderr[-3000:]

        from client import Client

        with Client(server.url, token=token, cache_dir=tmp_path / "ref-cache") as c:
            assert [b["version"] for b in c.list_bases("demo", "task")] == [1]
            ref = c.pull_basis("demo", "task")

        # The example worker: the dev token comes from the seed job's volume (file) ...
        worker = _run("finetune-example.sh", {**dev, "TINYSUB_TASK_ID": "demo"})
        assert worker.returncode == 0, worker.stderr[-3000:]
        report = json.loads(worker.stdout.strip().splitlines()[-1])
        assert report["task"] == "demo" and report["version"] == 1 and report["device"] == "cpu"
        assert set(report["layers"]) == set(ref.files)
        for name, info in report["layers"].items():
            assert tuple(info["shape"]) == ref.shape(name) and info["shape"][1] == 4
            assert info["orthonormality_error"] < 1e-4
        cached = {p.name for p in (tmp_path / "cache").rglob("*") if p.is_file()}
        for name, path in ref.files.items():  # the same verified bytes in the worker's cache
            assert path.name in cached, name
            assert np.array_equal(np.fromfile(path, "<f4"), ref.array(name).ravel())

        # ... but outside the dev profile only TINYSUB_TOKEN counts, and the task ID is required.
        prod = {**base, "TINYSUB_DEPLOY_PROFILE": "production", "TINYSUB_TASK_ID": "demo"}
        no_token = _run("finetune-example.sh", prod)
        assert no_token.returncode != 0 and "TINYSUB_TOKEN" in no_token.stderr
        with_token = _run("finetune-example.sh", {**prod, "TINYSUB_TOKEN": token})
        assert with_token.returncode == 0, with_token.stderr[-2000:]
        missing = {**prod, "TINYSUB_TOKEN": token, "TINYSUB_TASK_ID": ""}
        no_id = _run("finetune-example.sh", missing)
        assert no_id.returncode != 0 and "TINYSUB_TASK_ID" in no_id.stderr
    finally:
        server.stop()
