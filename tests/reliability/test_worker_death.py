"""A Dask worker process dies (SIGKILL) in the middle of a registry job on a real LocalCluster:
the scheduler retries its tasks on the remaining worker and the job ends with the kernels' exact
bytes, or, when retries are not allowed, the job fails with the reason and registers nothing
(no `ready`, no `latest`, no files). The kill is triggered from the job's own progress callback,
so it lands in a known phase (pass 1, the Gram; or pass 2, writing V)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import services.jobs
from services.app import create_app
from storage.layout import build_layout
from storage.trajectory import TrajectoryStore
from tests.conftest import make_trajectory
from tests.reliability.consistency import check_registry
from tests.services.helpers import auth, make_settings, token_for
from worker.svd.bases import task_basis

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

BLOCK_COLS = 4096
BIG = [("encoder.layer.0.w", (256, 1024)), ("encoder.layer.1.w", (64, 1024))]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stores")
    layout = build_layout(BIG)
    s = TrajectoryStore.create(tmp / "big", layout, model_name="big", chunk_cols=BLOCK_COLS)
    for row in make_trajectory(layout, 10, seed=2):
        s.append(row)
    return s


@pytest.fixture(scope="module")
def reference(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "basis"
    ref = task_basis(store.url, str(out), 4, block_cols=BLOCK_COLS).bases[0]
    return {n: ref.load(n).astype("<f4").tobytes() for n in ref.layer_names}


def _cluster(allowed_failures: int):
    import dask
    from dask.distributed import LocalCluster

    with dask.config.set({"distributed.scheduler.allowed-failures": allowed_failures}):
        return LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        )


def _run_with_a_worker_killed(tmp_path, store, cluster, phase, monkeypatch):
    from dask.distributed import Client as DaskClient

    settings = make_settings(
        tmp_path,
        executor="dask",
        executor_address=cluster.scheduler_address,
        block_cols=BLOCK_COLS,
        trusted_store_prefixes=[str(Path(store.url).parent)],
    )
    app = create_app(settings)
    api = TestClient(app, headers=auth(token_for(app, "admin")))
    api.post("/v1/tasks", json={"id": "big", "model": "big", "layout": store.layout.to_dict()})
    assert api.post("/v1/tasks/big/trajectory", json={"url": store.url}).status_code == 201
    with DaskClient(cluster) as dc:
        pids = dc.run(os.getpid)  # {worker address: pid}
    victim = sorted(pids.values())[0]
    killed = []
    real = services.jobs._Progress.__call__

    def progress(self, name, done, total):
        if name == phase and done >= 2 and not killed:
            os.kill(victim, signal.SIGKILL)
            killed.append((name, done, total))
        real(self, name, done, total)

    monkeypatch.setattr(services.jobs._Progress, "__call__", progress)
    job = api.post("/v1/tasks/big/bases", json={"kind": "task", "rank": 4}).json()
    app.state.runner.run_pending()
    app.state.runner.executors.close()
    assert killed, "the worker was never killed"
    return app, api, api.get(f"/v1/jobs/{job['id']}").json(), killed


@pytest.mark.parametrize("phase", ["gram", "project"])
def test_dead_worker_tasks_are_retried_on_the_others(tmp_path, store, reference, phase,
                                                     monkeypatch):  # fmt: skip
    cluster = _cluster(allowed_failures=3)
    try:
        app, api, job, killed = _run_with_a_worker_killed(
            tmp_path, store, cluster, phase, monkeypatch
        )
    finally:
        cluster.close()
    assert job["status"] == "succeeded", job
    manifest = api.get("/v1/tasks/big/bases/task").json()
    got = {i["name"]: api.get(i["url"]).content for i in manifest["layers"]}
    assert got == reference  # the same bytes as an undisturbed computation
    check_registry(app.state.registry.settings.data_dir)


def test_dead_worker_without_retries_fails_cleanly(tmp_path, store, monkeypatch):
    cluster = _cluster(allowed_failures=0)
    try:
        app, api, job, _ = _run_with_a_worker_killed(
            tmp_path, store, cluster, "project", monkeypatch
        )
    finally:
        cluster.close()
    assert job["status"] == "failed" and job["error_code"] == "task_failed", job
    assert "KilledWorker" in job["error"] or "died" in job["error"], job["error"]
    basis = api.get("/v1/tasks/big/bases/task/versions/1").json()
    assert basis["status"] == "failed" and basis["layers"] is None
    assert api.get("/v1/tasks/big/bases/task").status_code == 404  # no `latest`
    url = app.state.registry.basis_url("big", "task", 1)
    assert not Path(url).exists()  # half-written V removed, no manifest ever
    check_registry(app.state.registry.settings.data_dir)
