"""Issue 12, finding 2: a runner that lost its job's lease changes nothing and deletes nothing,
and only one process per database runs jobs (so start-up recovery cannot take live jobs).

The takeover is forced at fixed points (a heartbeat made stale by hand), not by sleeping."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from services import jobs as jobs_module
from services.app import create_app
from services.jobs import JobRunner, finish, work
from services.models import Basis, Job, utcnow
from storage.basis import BasisStore
from storage.errors import StorageError
from tests.services.helpers import add_task, make_settings


def _order(api, task="a") -> int:
    r = api.post(f"/v1/tasks/{task}/bases", json={"kind": "task", "rank": 3})
    assert r.status_code == 202, r.text
    return r.json()["id"]


def _rows(app, job_id) -> tuple[Job, Basis]:
    with app.state.registry.db.session() as s:
        job = s.get(Job, job_id)
        return job, s.get(Basis, job.basis_id)


def _make_stale(app, job_id) -> None:
    with app.state.registry.db.session() as s:
        s.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(heartbeat_at=utcnow() - timedelta(seconds=3600))
        )


@pytest.fixture
def task_a(api, tmp_path, layout):
    return add_task(api, tmp_path, "a", layout, rows=6, seed=4)


@pytest.fixture
def taken_over(app, api, task_a):
    """Runner A claims the job and stalls; B re-queues it (stale heartbeat), runs it and
    commits the basis. Returns (A, job id, the committed basis' folder)."""
    job_id = _order(api)
    a = app.state.runner
    assert a.claim() == job_id
    _make_stale(app, job_id)
    b = JobRunner(app.state.registry)
    assert b.requeue_orphans(older_than=60) == [job_id]
    assert b.run_pending() == [job_id]
    job, basis = _rows(app, job_id)
    assert (job.status, basis.status, job.attempts) == ("succeeded", "ready", 2)
    folder = Path(app.state.registry.settings.resolved_store_root) / basis.url
    assert BasisStore.exists(folder)
    return a, job_id, folder


def _still_served(app, api, job_id, folder) -> None:
    job, basis = _rows(app, job_id)
    assert (job.status, basis.status) == ("succeeded", "ready")
    assert BasisStore.exists(folder), "the winner's committed basis was deleted"
    r = api.get("/v1/tasks/a/bases/task")
    assert r.status_code == 200, r.text
    assert r.json()["version"] == basis.version


def test_a_runner_that_lost_its_lease_deletes_nothing(app, api, task_a, monkeypatch):
    # The audit's reproduction: A stalls mid-computation, B re-queues the job, runs it and
    # commits the basis; then A's computation fails, and A marked job and basis failed and
    # deleted the committed basis that `latest` points at.
    job_id = _order(api)
    a, b = app.state.runner, JobRunner(app.state.registry)
    real_compute = work.compute

    def a_stalls_then_fails(spec, **kwargs):
        monkeypatch.setattr(work, "compute", real_compute)  # B computes for real
        _make_stale(app, job_id)
        assert b.requeue_orphans(older_than=60) == [job_id]
        assert b.run_pending() == [job_id]
        raise StorageError("a chunk went missing under the stalled runner")

    assert a.claim() == job_id
    monkeypatch.setattr(work, "compute", a_stalls_then_fails)
    assert a.run_job(job_id) == "lost"
    _, basis = _rows(app, job_id)
    folder = Path(app.state.registry.settings.resolved_store_root) / basis.url
    _still_served(app, api, job_id, folder)


def test_every_write_of_a_lost_lease_is_refused(app, api, taken_over):
    a, job_id, folder = taken_over
    lease = jobs_module.Lease(job_id, a.owner, 1)
    job_before, _ = _rows(app, job_id)
    assert finish.finish_failed(a.registry, lease, None, "tinysub_error", "late failure") == "lost"
    finish.requeue(a.registry, lease, spend_attempt=True, error="late retry")
    beat = jobs_module._Heartbeat(a, lease)
    progress = jobs_module._Progress(a, lease, beat)
    with pytest.raises(jobs_module.LeaseLost):
        progress.note("computing")
    with pytest.raises(jobs_module.LeaseLost):
        progress("gram", 1, 10)  # the lost flag stops it without a database round trip
    job, _ = _rows(app, job_id)
    assert (job.heartbeat_at, job.progress, job.error) == (
        job_before.heartbeat_at,
        job_before.progress,
        job_before.error,
    )
    _still_served(app, api, job_id, folder)


def test_a_heartbeat_stops_renewing_a_lease_it_lost(app, api, task_a):
    job_id = _order(api)
    a = app.state.runner
    a.claim()
    lease = jobs_module.Lease(job_id, a.owner, 1)
    with app.state.registry.db.session() as s:  # another runner took it (attempt 2)
        s.execute(update(Job).where(Job.id == job_id).values(owner="other", attempts=2))
    beat = jobs_module._Heartbeat(a, lease)
    beat.lease_seconds = 0.4  # a beat every 0.5 s (the floor)
    beat.start()
    assert beat.lost.wait(10), "the heartbeat did not notice the lost lease"
    beat.done.set()
    job, _ = _rows(app, job_id)
    assert job.owner == "other"


def test_a_runner_whose_heartbeat_stalled_stops_itself(app, api, task_a):
    job_id = _order(api)
    a = app.state.runner
    a.claim()
    beat = jobs_module._Heartbeat(a, jobs_module.Lease(job_id, a.owner, 1))
    beat._renewed = time.monotonic() - 0.8 * beat.lease_seconds  # no renewal for 3/4 lease
    with pytest.raises(jobs_module.LeaseLost, match="3/4 of the lease"):
        beat.check()


def test_reaper_leaves_a_job_that_finished_after_it_was_read(app, api, task_a, monkeypatch):
    job_id = _order(api)
    a = app.state.runner
    a.claim()
    _make_stale(app, job_id)
    with app.state.registry.db.session() as s:  # the job finishes between read and write
        s.execute(update(Job).where(Job.id == job_id).values(status="succeeded"))
    assert a.requeue_orphans(older_than=60) == []
    assert _rows(app, job_id)[0].status == "succeeded"


def _runner(tmp_path) -> JobRunner:
    return create_app(make_settings(tmp_path, run_jobs=False)).state.runner


def test_only_one_runner_per_database_and_startup_takes_no_live_job(
    app, api, tmp_path, task_a, monkeypatch
):
    real_compute = work.compute
    release = threading.Event()

    def held_compute(spec, *, progress, **kwargs):
        while not release.is_set():  # mid-computation, reporting progress as kernels do
            progress("gram", 0, 1)
            time.sleep(0.02)
        return real_compute(spec, progress=progress, **kwargs)

    monkeypatch.setattr(work, "compute", held_compute)
    first, second = _runner(tmp_path), _runner(tmp_path)
    try:
        first.start()
        assert first.is_leader
        live = _order(api)
        first.notify()
        _wait_for(lambda: _rows(app, live)[0].status == "running")
        # A second process starts while the leader's job runs: before the runner lock, its
        # start-up re-queued every running job, this live one included.
        second.start()
        assert not second.is_leader
        time.sleep(0.3)
        job, _ = _rows(app, live)
        assert (job.status, job.owner, job.attempts) == ("running", first.owner, 1)
        # The leader stops (its job goes back to the queue); the standby takes over.
        first.stop()
        release.set()
        _wait_for(lambda: second.is_leader)
        second.notify()
        _wait_for(lambda: _rows(app, live)[0].status == "succeeded")
        assert _rows(app, live)[1].status == "ready"
    finally:
        release.set()
        first.stop()
        second.stop()


def _wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
