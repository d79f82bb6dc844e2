"""The durable job runner: restarts, resumption, cancellation, failures, retries."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from services.app import create_app
from services.compute import compute
from services.jobs.work import load
from services.models import Basis, Job
from storage.basis import BasisStore, BasisWriter
from tests.services.helpers import add_task, api_client, auth, layer_bytes, make_settings, token_for
from worker.executors import LocalExecutor
from worker.svd.bases import task_basis


def _order(api, task="a", **body):
    r = api.post(f"/v1/tasks/{task}/bases", json={"kind": "task", "rank": 3, **body})
    assert r.status_code == 202, r.text
    return r.json()["id"]


def _job(app, job_id) -> Job:
    with app.state.registry.db.session() as s:
        return s.get(Job, job_id)


def _basis(app, job_id) -> Basis:
    with app.state.registry.db.session() as s:
        return s.get(Basis, s.get(Job, job_id).basis_id)


def _wait(api, job_id, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = api.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish: {job}")


@pytest.fixture
def task_a(api, tmp_path, layout):
    return add_task(api, tmp_path, "a", layout, rows=6, seed=4)


def test_job_left_running_is_rerun_after_restart(app, api, tmp_path, task_a):
    job_id = _order(api)
    assert app.state.runner.claim() == job_id  # the process "dies" holding the job
    assert _job(app, job_id).status == "running" and _basis(app, job_id).status == "running"

    restarted = create_app(make_settings(tmp_path, run_jobs=True))
    with TestClient(restarted, headers=auth(token_for(restarted, "read"))) as again:
        job = _wait(again, job_id)
        assert job["status"] == "succeeded" and job["attempts"] == 2
        manifest = again.get("/v1/tasks/a/bases/task").json()
        ref = task_basis(task_a.url, str(tmp_path / "ref"), 3).bases[0]
        got = layer_bytes(again, manifest)
    assert got == {n: ref.load(n).tobytes() for n in ref.layer_names}


def test_basis_committed_before_the_crash_is_adopted_not_recomputed(app, api, tmp_path, task_a):
    job_id = _order(api)
    app.state.runner.claim()
    spec = load(app.state.registry, job_id).spec
    store = compute(spec, executor=LocalExecutor(1), block_cols=1 << 18)  # then the crash
    stamp = (tmp_path / spec.url / "tinysub-basis.json").stat().st_mtime_ns

    restarted = create_app(make_settings(tmp_path))
    restarted.state.runner.requeue_orphans()
    assert restarted.state.runner.run_pending() == [job_id]
    job = _job(restarted, job_id)
    assert job.status == "succeeded" and job.progress.get("phase") == "done"
    assert (tmp_path / spec.url / "tinysub-basis.json").stat().st_mtime_ns == stamp
    assert _basis(restarted, job_id).layers == [i.to_dict() for i in store.layers.values()]


def test_half_written_basis_is_never_ready_and_gets_recomputed(app, api, tmp_path, task_a):
    job_id = _order(api)
    app.state.runner.claim()
    spec = load(app.state.registry, job_id).spec
    shapes = {g.name: (g.size, 3) for g in task_a.layout.groups}
    writer = BasisWriter.create(spec.url, shapes, chunk_rows=256)  # arrays, no manifest
    assert not BasisStore.exists(writer.url)
    r = api.get("/v1/tasks/a/bases/task", params={"version": 1})
    assert r.status_code == 409  # running: not served

    restarted = create_app(make_settings(tmp_path))
    restarted.state.runner.requeue_orphans()
    restarted.state.runner.run_pending()
    assert _job(restarted, job_id).status == "succeeded"
    ref = task_basis(task_a.url, str(tmp_path / "ref"), 3).bases[0]
    again = api_client(restarted, "read")
    got = layer_bytes(again, again.get("/v1/tasks/a/bases/task").json())
    assert got == {n: ref.load(n).tobytes() for n in ref.layer_names}


def test_cancel_pending_and_running_jobs(app, api, tmp_path, task_a):
    pending = _order(api)
    r = api.post(f"/v1/jobs/{pending}/cancel")
    assert r.json()["status"] == "cancelled"
    assert _basis(app, pending).status == "failed"
    assert api.post(f"/v1/jobs/{pending}/cancel").status_code == 409

    running = _order(api)
    assert app.state.runner.claim() == running
    assert api.post(f"/v1/jobs/{running}/cancel").json()["cancel_requested"] is True
    assert app.state.runner.run_job(running) == "cancelled"
    basis = _basis(app, running)
    assert basis.status == "failed" and not (tmp_path / basis.url).exists()
    assert app.state.runner.run_pending() == []
    assert api.get("/v1/tasks/a/bases/task").status_code == 404


def test_failed_job_records_the_error_and_moves_nothing(app, api, tmp_path, task_a):
    import shutil

    job_id = _order(api)
    shutil.rmtree(task_a.url)  # the registered store disappears before the job runs
    app.state.runner.run_pending()
    job = api.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "failed" and job["error_code"] == "not_found"
    assert _basis(app, job_id).status == "failed"
    assert api.get("/v1/tasks/a/bases/task").status_code == 404


def test_worker_failure_is_retried_then_succeeds(app, api, task_a, monkeypatch):
    runner = app.state.runner

    class DyingWorker(LocalExecutor):
        def map(self, fn, items, progress=None):
            raise ConnectionResetError("worker died")

    real_get = runner.executors.get
    calls = []

    def get(name):
        calls.append(name)
        return DyingWorker(1) if len(calls) == 1 else real_get(name)

    monkeypatch.setattr(runner.executors, "get", get)
    job_id = _order(api)
    runner.run_pending(max_jobs=1)
    job = _job(app, job_id)
    assert job.status == "pending" and "worker died" in job.error and job.attempts == 1
    runner.run_pending()
    assert _job(app, job_id).status == "succeeded"


def test_gives_up_after_max_attempts(app, api, task_a):
    job_id = _order(api)
    with app.state.registry.db.session() as s:
        s.execute(update(Job).where(Job.id == job_id).values(attempts=3))
    app.state.runner.run_pending()
    job = _job(app, job_id)
    assert job.status == "failed" and "gave up" in job.error


def test_stopping_runner_requeues_without_spending_an_attempt(app, api, task_a):
    job_id = _order(api)
    runner = app.state.runner
    assert runner.claim() == job_id
    runner.stopping = True
    assert runner.run_job(job_id) == "pending"
    job = _job(app, job_id)
    assert job.status == "pending" and job.attempts == 0
    assert _basis(app, job_id).status == "pending"


def test_background_runner_picks_up_new_orders(tmp_path, layout):
    app = create_app(make_settings(tmp_path, run_jobs=True))
    with TestClient(app, headers=auth(token_for(app, "admin"))) as api:
        add_task(api, tmp_path, "a", layout, rows=5)
        job_id = _order(api)
        assert _wait(api, job_id)["status"] == "succeeded"
        assert api.get("/v1/tasks/a/bases/task").json()["version"] == 1
