from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError

from services.settings import Settings


def test_environment_prefix(monkeypatch, tmp_path):
    monkeypatch.setenv("TINYSUB_DATA_DIR", str(tmp_path / "d"))
    monkeypatch.setenv("TINYSUB_EXECUTOR", "dask")
    monkeypatch.setenv("TINYSUB_EXECUTOR_ADDRESS", "tcp://127.0.0.1:8786")
    monkeypatch.setenv("TINYSUB_ANONYMOUS_READ", "true")
    monkeypatch.setenv("TINYSUB_TRUSTED_STORE_PREFIXES", '["/data/a", "s3://b/p"]')
    s = Settings()
    assert s.executor == "dask" and s.executor_address == "tcp://127.0.0.1:8786"
    assert s.anonymous_read is True and s.trusted_store_prefixes == ["/data/a", "s3://b/p"]
    assert s.resolved_database_url == f"sqlite:///{(tmp_path / 'd' / 'registry.db').resolve()}"
    assert s.resolved_store_root == str((tmp_path / "d" / "store").resolve())


def test_defaults_are_safe(monkeypatch):
    for key in ("TINYSUB_ANONYMOUS_READ", "TINYSUB_EXECUTOR"):
        monkeypatch.delenv(key, raising=False)
    s = Settings()
    assert s.anonymous_read is False and s.executor == "local"


def test_unknown_executor_is_refused():
    with pytest.raises(ValidationError):
        Settings(executor="spark")


def test_importing_the_service_creates_nothing(tmp_path):
    code = (
        "import services.app, services.routes, services.jobs, client, client.client, "
        "tinysub.cli.main; import sys; print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(__import__("pathlib").Path(__file__).resolve().parents[2])},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"  # serving needs no torch
    assert list(tmp_path.iterdir()) == []
