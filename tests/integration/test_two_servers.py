"""Issue 12, finding 2, with real processes: two `tinysub serve` on one PostgreSQL.

Both serve requests; only the holder of the runner lock runs jobs. A server that starts while
the other runs a job leaves that job alone (before the lock, its start-up re-queued every
running job, live ones included), and when the running server is SIGKILLed the other takes the
lock, re-queues the job and finishes it with the kernels' exact bytes."""

from __future__ import annotations

import json
import time

import pytest

from client import Client
from services.local import LocalServer
from storage.layout import build_layout
from storage.trajectory import TrajectoryStore
from tests.conftest import make_trajectory
from worker.svd.bases import task_basis

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

BLOCK_COLS = 4096
BIG = [("encoder.layer.0.w", (512, 1024)), ("encoder.layer.1.w", (64, 1024))]
JOBS = 6


def _wait_until(condition, timeout: float = 120.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
    return value


def test_two_servers_share_one_queue_and_fail_over(postgres, tmp_path):
    layout = build_layout(BIG)
    store = TrajectoryStore.create(tmp_path / "stores" / "big", layout, chunk_cols=BLOCK_COLS)
    for row in make_trajectory(layout, 12, seed=7):
        store.append(row)
    ref = task_basis(store.url, str(tmp_path / "ref"), 5, block_cols=BLOCK_COLS).bases[0]
    want = {n: ref.load(n).astype("<f4").tobytes() for n in ref.layer_names}

    env = {
        "TINYSUB_DATABASE_URL": postgres.create_database("t_two_servers"),
        "TINYSUB_STORE_ROOT": str(tmp_path / "bases"),  # shared: either server serves any basis
        "TINYSUB_TRUSTED_STORE_PREFIXES": json.dumps([str(tmp_path / "stores")]),
        "TINYSUB_BLOCK_COLS": str(BLOCK_COLS),
        "TINYSUB_JOB_POLL_SECONDS": "0.05",
    }
    one, two = LocalServer(tmp_path / "one", env), LocalServer(tmp_path / "two", env)
    token = one.admin_token()
    try:
        one.start()
        c1 = Client(one.url, token=token, cache_dir=tmp_path / "cache1")
        c1.create_task("big", model="big", layout=store.layout)
        c1.register_trajectory("big", store.url)
        jobs = [c1.compute_basis("big", "task", rank=5) for _ in range(JOBS)]
        _wait_until(lambda: any(j.refresh().status == "running" for j in jobs), what="a job")

        two.start()  # while server one runs a job
        running_at_start = [j.id for j in jobs if j.refresh().status == "running"]
        assert running_at_start, "no job ran while server two started: the check would be moot"
        c2 = Client(two.url, token=token, cache_dir=tmp_path / "cache2")
        for job in jobs:
            done = c2.job(job.id).wait(timeout=240, raise_on_error=False)
            assert done.status == "succeeded", done.data
            assert done.attempts == 1, (job.id, running_at_start)  # nobody took a live job

        # Fail-over: a job ordered through server two is run by one (the lock holder), which
        # dies mid-job; two takes the lock, re-queues the job and finishes it.
        job = c2.compute_basis("big", "task", rank=5)
        _wait_until(lambda: job.refresh().status == "running", what="the fail-over job")
        one.kill()
        done = c2.job(job.id).wait(timeout=240, raise_on_error=False)
        assert done.status == "succeeded", done.data
        assert done.attempts == 2  # re-run after the kill, not adopted from nowhere
        pulled = c2.pull_basis("big", "task", version=done.basis["version"])
        assert {n: p.read_bytes() for n, p in pulled.files.items()} == want
    finally:
        one.stop()
        two.stop()
