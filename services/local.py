"""A registry in a background process on loopback: for the demo, benchmarks and tests.

with LocalServer(data_dir) as server:       # `tinysub serve` on a free 127.0.0.1 port
    client = Client(server.url, token=server.admin_token())

It ships in the package because a user-facing command needs it: `tinysub demo` starts its own
registry with it. The test-only topology (PostgreSQL, moto's S3, Dask and Ray clusters as
processes) lives in tests/topology.py.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from services.db import Database
from services.security import create_token
from services.settings import Settings
from storage.vocabulary import TokenScope

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalServer:
    """`tinysub serve` in its own process group. Settings come as TINYSUB_* variables in `env`
    (TINYSUB_DATA_DIR is set to `data_dir`)."""

    def __init__(
        self,
        data_dir: str | os.PathLike,
        env: dict[str, str] | None = None,
        port: int | None = None,
        log_level: str = "warning",
    ) -> None:
        # Absolute: the server runs with the repository as its working directory, and a
        # relative data dir would name another folder there than here (admin_token, logs).
        self.data_dir = Path(data_dir).resolve()
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        pythonpath = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
        self.env = {
            **os.environ,
            "TINYSUB_DATA_DIR": str(self.data_dir),
            **(env or {}),
            "PYTHONPATH": pythonpath,
        }
        self.log = self.data_dir / "server.log"
        self.log_level = log_level
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def admin_token(self, name: str = "local-admin") -> str:
        """A new admin token, written straight into the server's database."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        url = (
            self.env.get("TINYSUB_DATABASE_URL")
            or Settings(data_dir=self.data_dir).resolved_database_url
        )
        db = Database(url)
        db.migrate()
        with db.session() as s:
            _, plain = create_token(s, name, [TokenScope.ADMIN])
        db.dispose()
        return plain

    def start(self, timeout: float = 60.0) -> LocalServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable, "-m", "tinysub.cli.main", "serve",
            "--host", "127.0.0.1", "--port", str(self.port), "--log-level", self.log_level,
        ]  # fmt: skip
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=REPO, env=self.env, stdout=log, stderr=log, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the registry exited: {self.log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(self.url + "/v1/health", timeout=1).status_code == 200:
                    return self
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"the registry did not come up: {self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL the server: no shutdown handler runs, as when a machine dies."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
