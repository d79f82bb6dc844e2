"""The deployment's services as real processes on loopback: for tests and benchmarks.

docker-compose.yml runs object storage, PostgreSQL, a Dask scheduler with workers, a Ray head
and the registry as containers. This module starts the same pieces without Docker, each in its
own process group so that `stop()` ends it and everything it started (and nothing else):

    with LocalS3(workdir, "tinysub") as s3, LocalPostgres(workdir) as pg:
        url = pg.create_database("registry")           # postgresql+psycopg://...
        opts = s3.storage_options                      # fsspec options for s3://tinysub/...

- LocalS3: moto's S3 server (`python -m moto.server`, the `moto_server` command) and a bucket.
- LocalPostgres: `initdb` and `postgres` from the Debian packages, run as the `postgres` user
  when this process is root (PostgreSQL refuses to run as root), trust auth on 127.0.0.1.
- DaskCluster: `dask scheduler` and `dask worker` processes (the `dask` command line).
- RayHead: `ray start --head --block`; stopped by signalling its process group. `ray stop` is
  not used: it kills every Ray process of the user on the machine, other clusters included.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from services.local import REPO, free_port

log = logging.getLogger(__name__)


class Process:
    """One command in its own session (process group), its output in a log file."""

    def __init__(
        self,
        name: str,
        cmd: Sequence[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        cwd: str | os.PathLike | None = None,
    ) -> None:
        self.name, self.cmd, self.log_path = name, list(cmd), Path(log_path)
        self.env = env
        self.cwd = cwd
        self.proc: subprocess.Popen | None = None

    def start(self) -> Process:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                self.cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        log.info("started %s (pid %s): %s", self.name, self.proc.pid, " ".join(self.cmd))
        return self

    @property
    def running(self) -> bool:
        # Not poll(): that would reap an exited leader, and stop() must still find its group.
        return self.proc is not None and self.proc.returncode is None and not _exited(self.proc.pid)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def wait_until(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll `ready()` until it is true; raise with the log's tail if the process exits or
        the time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(f"{self.name} exited before {what}:\n{self.log_tail()}")
            with contextlib.suppress(Exception):
                if ready():
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name}: no {what} after {timeout:.0f}s:\n{self.log_tail()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        """Signal the whole process group, then SIGKILL what is left of it.

        The leader is reaped only after the SIGKILL: until then it is at least a zombie that
        keeps its pid, so the group id cannot have been reused by an unrelated process.
        """
        if self.proc is None or self.proc.returncode is not None:
            return
        pgid = self.proc.pid  # start_new_session: the group id is the leader's pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        deadline = time.monotonic() + timeout
        while not _exited(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not _exited(pgid):
            log.info("%s did not stop on signal %s in %ss; killing it", self.name, sig, timeout)
        # Children that outlived the leader are in the same group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)


def _exited(pid: int) -> bool:
    """Whether child `pid` has exited, without reaping it (it stays a zombie)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:  # already reaped
        return True


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def _script(name: str) -> str:
    """A console script of this environment (next to the interpreter), else from PATH."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        raise FileNotFoundError(f"the `{name}` command is not installed")
    return found


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment, with this checkout importable (workers unpickle tinysub's tasks)."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, **(extra or {}), "PYTHONPATH": path}


class _Service:
    procs: list[Process]

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self):  # pragma: no cover - every service overrides it
        raise NotImplementedError


class LocalS3(_Service):
    """moto's S3-compatible server on a free loopback port, with one bucket."""

    KEY = SECRET = "testing"  # moto accepts any credentials; nothing secret here
    REGION = "us-east-1"

    def __init__(self, workdir: str | os.PathLike, bucket: str = "tinysub") -> None:
        self.workdir = Path(workdir)
        self.bucket = bucket
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        self.procs = [Process("moto", cmd, self.workdir / "moto.log", child_env())]

    @property
    def storage_options(self) -> dict[str, Any]:
        """fsspec (s3fs) options for s3:// URLs on this server."""
        return {
            "key": self.KEY,
            "secret": self.SECRET,
            "client_kwargs": {"endpoint_url": self.endpoint, "region_name": self.REGION},
        }

    @property
    def env(self) -> dict[str, str]:
        """The same as environment variables (botocore reads AWS_ENDPOINT_URL), for processes
        that open s3:// URLs without storage options."""
        return {
            "AWS_ACCESS_KEY_ID": self.KEY,
            "AWS_SECRET_ACCESS_KEY": self.SECRET,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_DEFAULT_REGION": self.REGION,
        }

    def start(self) -> LocalS3:
        import boto3

        proc = self.procs[0].start()
        proc.wait_until(lambda: port_open(self.port), 60, "an open port")
        s3 = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.KEY,
            aws_secret_access_key=self.SECRET,
            region_name=self.REGION,
        )
        proc.wait_until(lambda: s3.create_bucket(Bucket=self.bucket) is not None, 30, "a bucket")
        return self


def postgres_bin_dir() -> Path | None:
    """The newest installed PostgreSQL server's bin folder (Debian layout), or PATH's."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/postgres"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if found:
        return Path(found[-1]).parent
    exe = shutil.which("postgres")
    return Path(exe).parent if exe else None


def postgres_unavailable() -> str | None:
    """Why a LocalPostgres cannot start here, or None when it can."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "the psycopg driver is not installed (pip install 'tinysub[server]')"
    bindir = postgres_bin_dir()
    if bindir is None or not (bindir / "initdb").exists():
        return "no PostgreSQL server binaries (apt-get install postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no `postgres` user to run the server as"
        if not shutil.which("runuser"):
            return "running as root without `runuser` to switch to the postgres user"
    return None


class LocalPostgres(_Service):
    """A throwaway PostgreSQL cluster: initdb into a temporary folder, `postgres` on a free
    loopback port with trust authentication (loopback only, tests only), fsync off."""

    USER = "tinysub"

    def __init__(self, workdir: str | os.PathLike) -> None:
        reason = postgres_unavailable()
        if reason:
            raise RuntimeError(f"cannot start PostgreSQL: {reason}")
        self.workdir = Path(workdir)
        self.bindir = postgres_bin_dir()
        self.port = free_port()
        # Its own folder under /tmp, not under workdir: pytest's temporary folders are private
        # to root, and the postgres user must be able to reach its data directory.
        self.home = Path(tempfile.mkdtemp(prefix="tinysub-pg-"))
        self.data = self.home / "data"
        self.procs = []

    def _as_owner(self, cmd: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{self.USER}@127.0.0.1:{self.port}/{database}"

    def _connect(self, database: str = "postgres"):
        import psycopg

        return psycopg.connect(
            host="127.0.0.1", port=self.port, user=self.USER, dbname=database, autocommit=True
        )

    def create_database(self, name: str) -> str:
        """Create database `name` (a plain identifier) and return its SQLAlchemy URL."""
        if not name.replace("_", "").isalnum():
            raise ValueError(f"database name {name!r} must be letters, digits and _")
        with self._connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def start(self) -> LocalPostgres:
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.home, pw.pw_uid, pw.pw_gid)
        subprocess.run(
            self._as_owner(
                [
                    str(self.bindir / "initdb"),
                    "-D",
                    str(self.data),
                    "-U",
                    self.USER,
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--no-sync",
                ]
            ),  # fmt: skip
            check=True,
            capture_output=True,
            cwd=self.home,
        )
        cmd = self._as_owner(
            [str(self.bindir / "postgres"), "-D", str(self.data), "-h", "127.0.0.1",
             "-p", str(self.port), "-k", str(self.home),
             "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        )  # fmt: skip
        proc = Process("postgres", cmd, self.workdir / "postgres.log", cwd=self.home).start()
        self.procs = [proc]

        def accepts() -> bool:
            with self._connect():
                return True

        proc.wait_until(accepts, 60, "a connection")
        return self

    def stop(self) -> None:
        for p in self.procs:
            p.stop(signal.SIGINT)  # "fast" shutdown: roll back open transactions, exit
        self.procs = []
        shutil.rmtree(self.home, ignore_errors=True)


class DaskCluster(_Service):
    """`dask scheduler` and `n_workers` x `dask worker` (one thread each) on loopback."""

    def __init__(
        self, workdir: str | os.PathLike, n_workers: int = 2, env: dict[str, str] | None = None
    ) -> None:
        self.workdir = Path(workdir)
        self.n_workers = n_workers
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.env = child_env(env)
        dask = _script("dask")
        scheduler = [dask, "scheduler", "--host", "127.0.0.1", "--port", str(self.port),
                     "--dashboard-address", f"127.0.0.1:{free_port()}", "--no-show"]  # fmt: skip
        self.procs = [
            Process("dask-scheduler", scheduler, self.workdir / "scheduler.log", self.env)
        ]
        for i in range(n_workers):
            worker = [dask, "worker", self.address, "--name", f"worker-{i}", "--host", "127.0.0.1",
                      "--nthreads", "1", "--nworkers", "1", "--no-dashboard",
                      "--local-directory", str(self.workdir / f"worker-{i}")]  # fmt: skip
            self.procs.append(
                Process(f"dask-worker-{i}", worker, self.workdir / f"worker-{i}.log", self.env)
            )

    def start(self) -> DaskCluster:
        from dask.distributed import Client

        scheduler = self.procs[0].start()
        scheduler.wait_until(lambda: port_open(self.port), 60, "an open port")
        for p in self.procs[1:]:
            p.start()
        with Client(self.address, timeout=30) as client:
            client.wait_for_workers(self.n_workers, timeout=90)
        return self


class RayHead(_Service):
    """`ray start --head --block` with `num_cpus` CPUs, its own temp dir and free ports (a
    second Ray on the machine would otherwise collide on the fixed ones).

    Token authentication is on, with a fresh token: drivers need `env` (RAY_AUTH_MODE and
    RAY_AUTH_TOKEN) to connect, as the registry container does in docker-compose.yml.
    """

    def __init__(
        self, workdir: str | os.PathLike, num_cpus: int = 2, env: dict[str, str] | None = None
    ) -> None:
        import secrets

        self.workdir = Path(workdir)
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
        # Ray Client, as a driver off the cluster's machines connects (docker-compose.yml).
        self.client_port = free_port()
        self.client_address = f"ray://127.0.0.1:{self.client_port}"
        # Unix socket paths are limited to ~107 bytes: keep the session folder short.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="tsray-"))
        cmd = [
            _script("ray"), "start", "--head", "--block", "--disable-usage-stats",
            "--node-ip-address", "127.0.0.1", "--port", str(self.port),
            "--num-cpus", str(num_cpus), "--include-dashboard", "false",
            "--temp-dir", str(self.temp_dir),
            "--ray-client-server-port", str(self.client_port),
            "--dashboard-agent-listen-port", str(free_port()),
            "--object-store-memory", str(256 << 20),
        ]  # fmt: skip
        env = child_env({**(env or {}), **self.env})
        self.procs = [Process("ray-head", cmd, self.workdir / "ray-head.log", env)]

    def start(self) -> RayHead:
        proc = self.procs[0].start()
        proc.wait_until(lambda: port_open(self.port), 90, "the GCS port")
        # The raylet registers a moment after the GCS listens.
        proc.wait_until(
            lambda: "Ray runtime started" in proc.log_tail(20000), 90, "a started runtime"
        )
        return self

    def stop(self) -> None:
        # `ray start --block` waits on each child's graceful exit for many seconds; a test
        # cluster has nothing to save, so the group is killed after a short grace period.
        for p in self.procs:
            p.stop(timeout=3)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
