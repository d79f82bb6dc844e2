"""Issue 12, item 9: races between a check and the write that depends on it.

Each test runs the competing operation at a fixed point between the two (a monkeypatched seam,
no sleeps): a row committed while a part of it is being staged, a job claimed or finished while
a cancel is being written, `latest` moved higher while a finishing job moves it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import pytest
from sqlalchemy import update

import services.bases as bases_service
import services.routes.jobs as jobs_routes
import services.trajectories as traj_service
import services.trajectories.parts as trajectory_parts
from services.bases import LATEST, move_latest
from services.context import KeyedLocks, Registry
from services.models import Alias, Basis, Job, Task, Trajectory
from tests.conftest import make_trajectory
from tests.services.helpers import add_task


# ------------------------------------------------------------------------------- helpers
def _put(api, row: int, group: str, values: np.ndarray, offset: int = 0):
    return api.put(
        f"/v1/tasks/t/trajectory/rows/{row}/groups/{group}",
        params={"offset": offset},
        content=np.ascontiguousarray(values, dtype="<f4").tobytes(),
        headers={"Content-Type": "application/octet-stream"},
    )


def _stage_row(api, layout, row: int, vectors: dict[str, np.ndarray]) -> None:
    for g in layout.group_names:
        assert _put(api, row, g, vectors[g]).status_code == 200


def _commit(reg: Registry, row: int) -> None:
    """commit_row as the commit route runs it (its own session)."""
    with reg.db.session() as s:
        task, traj = s.get(Task, "t"), s.get(Trajectory, "t")
        traj_service.commit_row(reg, s, task, traj, row, step=None, epoch=None, metrics={})


@pytest.fixture
def upload(app, api, layout):
    """Task `t` with an upload store and row 0 fully staged (not committed)."""
    r = api.post("/v1/tasks", json={"id": "t", "model": "tiny", "layout": layout.to_dict()})
    assert r.status_code == 201, r.text
    assert api.post("/v1/tasks/t/trajectory", json={}).status_code == 201
    row = make_trajectory(layout, 1, seed=5)[0]
    _stage_row(api, layout, 0, row)
    return row


def _assert_nothing_staged(reg: Registry) -> None:
    assert traj_service.staged_parts(reg, "t") == {}
    leftovers = reg.staging("t").list() if reg.staging("t").exists() else []
    assert [p for p in leftovers if p.isdigit()] == [], leftovers


# ----------------------------------------------------------------------------- put_part
def test_part_for_a_row_committed_before_the_stage_lock_is_409(app, api, layout, upload):
    """The row is committed (this process) after put_part's request arrived and before it
    takes the row's stage lock: the part must be checked against the committed row."""
    reg: Registry = app.state.registry
    original: Callable = reg.locks
    fired = []

    def locks(key):
        if key == ("stage", "t", 0) and not fired:
            fired.append(key)
            _commit(reg, 0)  # takes the same locks itself, before put_part holds any
        return original(key)

    g = layout.group_names[0]
    other = upload[g] + 1.0
    reg.locks = locks
    try:
        r = _put(api, 0, g, other)
    finally:
        reg.locks = original
    assert fired, "the seam did not run"
    assert r.status_code == 409, r.text
    body = r.json()
    assert body["code"] == "conflict" and "committed" in body["message"], body
    assert set(body) >= {"code", "message", "detail"}
    _assert_nothing_staged(reg)
    # The same values as committed are still accepted, as `committed`.
    assert _put(api, 0, g, upload[g]).json()["status"] == "committed"


def test_part_for_a_row_another_server_commits_while_staging_is_409(
    app, api, layout, upload, monkeypatch
):
    """Another server (its own in-process locks) commits the row after this one checked the
    row count and before it lists the staged parts: the part this server then stages must not
    linger, and the answer is the committed row's 409."""
    reg: Registry = app.state.registry
    other_server = dataclasses.replace(reg, locks=KeyedLocks())
    original = traj_service.staged_parts
    fired = []

    def staged_parts(*args, **kw):
        if not fired:
            fired.append(args)
            _commit(other_server, 0)
        return original(*args, **kw)

    # put_part looks staged_parts up in services.trajectories.parts: the seam goes there.
    monkeypatch.setattr(trajectory_parts, "staged_parts", staged_parts)
    g = layout.group_names[0]
    r = _put(api, 0, g, upload[g] + 1.0)
    monkeypatch.undo()
    assert fired, "the seam did not run"
    assert r.status_code == 409, r.text
    assert r.json()["code"] == "conflict" and "committed" in r.json()["message"]
    _assert_nothing_staged(reg)
    assert api.get("/v1/tasks/t/trajectory").json()["rows"] == 1


# ------------------------------------------------------------------------------- cancel
def _order(api) -> int:
    r = api.post("/v1/tasks/a/bases", json={"kind": "task", "rank": 3})
    assert r.status_code == 202, r.text
    return r.json()["id"]


def _job_and_basis(app, job_id: int) -> tuple[Job, Basis]:
    with app.state.registry.db.session() as s:
        job = s.get(Job, job_id)
        return job, s.get(Basis, job.basis_id)


@pytest.fixture
def task_a(api, tmp_path, layout):
    return add_task(api, tmp_path, "a", layout, rows=6, seed=4)


def _after_get_job(monkeypatch, competitor: Callable[[int], None]) -> list:
    """Run `competitor(job_id)` right after the cancel route has read the job."""
    original = jobs_routes.get_job
    fired: list = []

    def get_job(session, job_id):
        job = original(session, job_id)
        if not fired:
            fired.append(job_id)
            competitor(job_id)
        return job

    monkeypatch.setattr(jobs_routes, "get_job", get_job)
    return fired


def test_cancel_that_loses_to_a_claim_requests_cancel_of_the_running_job(
    app, api, task_a, monkeypatch
):
    runner = app.state.runner
    job_id = _order(api)
    fired = _after_get_job(monkeypatch, lambda _: runner.claim())
    r = api.post(f"/v1/jobs/{job_id}/cancel")
    assert fired, "the seam did not run"
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "running" and r.json()["cancel_requested"] is True
    job, basis = _job_and_basis(app, job_id)
    # The claim's state stands: running, owned by the runner; the basis is not marked failed.
    assert (job.status, job.owner, job.finished_at) == ("running", runner.owner, None)
    assert basis.status == "running" and basis.error is None
    # ...and the runner stops it at its first step, as for any running job.
    assert runner.run_job(job_id) == "cancelled"


def test_cancel_that_loses_to_a_finish_is_409_and_changes_nothing(app, api, task_a, monkeypatch):
    runner = app.state.runner
    job_id = _order(api)

    def claim_and_run(_: int) -> None:
        assert runner.claim() == job_id
        assert runner.run_job(job_id) == "succeeded"

    fired = _after_get_job(monkeypatch, claim_and_run)
    r = api.post(f"/v1/jobs/{job_id}/cancel")
    assert fired, "the seam did not run"
    assert r.status_code == 409, r.text
    assert r.json()["code"] == "conflict" and set(r.json()) >= {"code", "message", "detail"}
    job, basis = _job_and_basis(app, job_id)
    assert (job.status, job.cancel_requested, job.error) == ("succeeded", False, None)
    assert basis.status == "ready"


def test_cancel_of_a_pending_job_still_cancels_it(app, api, task_a):
    job_id = _order(api)
    r = api.post(f"/v1/jobs/{job_id}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
    job, basis = _job_and_basis(app, job_id)
    assert job.cancel_requested and job.finished_at is not None
    assert (basis.status, basis.error) == ("failed", "cancelled by request")
    assert app.state.runner.claim() is None


# ------------------------------------------------------------------------------- latest
def _latest(reg: Registry, task_id: str = "a") -> int | None:
    with reg.db.session() as s:
        row = s.get(Alias, (task_id, "task", LATEST))
        return None if row is None else row.version


def _set_latest(reg: Registry, version: int) -> None:
    with reg.db.session() as s:
        s.execute(
            update(Alias)
            .where(Alias.task_id == "a", Alias.kind == "task", Alias.name == LATEST)
            .values(version=version)
        )


def test_latest_never_moves_to_a_lower_version(app, api, task_a, monkeypatch):
    """Server A finishes v2 while server B finishes v3: B's move lands between A's read of
    `latest` and A's write. `latest` must stay at 3."""
    reg: Registry = app.state.registry
    with reg.db.session() as s:
        move_latest(s, Basis(task_id="a", kind="task", version=1))
    assert _latest(reg) == 1

    original = bases_service.utcnow
    fired = []

    def utcnow():
        if not fired:
            fired.append(True)
            _set_latest(reg, 3)  # server B, its own session, committed
        return original()

    monkeypatch.setattr(bases_service, "utcnow", utcnow)
    with reg.db.session() as s:
        move_latest(s, Basis(task_id="a", kind="task", version=2))
    assert fired, "the seam did not run"
    assert _latest(reg) == 3


def test_latest_moves_up_and_is_created_once(app, api, task_a):
    reg: Registry = app.state.registry
    assert _latest(reg) is None
    for version, expected in ((2, 2), (1, 2), (5, 5), (4, 5), (5, 5)):
        with reg.db.session() as s:
            move_latest(s, Basis(task_id="a", kind="task", version=version))
        assert _latest(reg) == expected


def test_latest_created_by_another_server_first_is_not_lowered(app, api, task_a, monkeypatch):
    """Both servers find no `latest`; the other one inserts v3 first. This server's insert
    clashes on the primary key: it falls back to the conditional UPDATE, keeps v3, and its
    transaction (the job's other changes) still commits."""
    reg: Registry = app.state.registry
    with reg.db.session() as s:
        s.add(Alias(task_id="a", kind="task", name=LATEST, version=3))
    original = bases_service._raise_latest
    calls = []

    def raise_latest(session, basis):
        calls.append(basis.version)
        return False if len(calls) == 1 else original(session, basis)  # ran before the insert

    monkeypatch.setattr(bases_service, "_raise_latest", raise_latest)
    with reg.db.session() as s:
        monkeypatch.setattr(s, "get", lambda *a, **kw: None)  # read before the insert, too
        s.execute(update(Task).where(Task.id == "a").values(model="tiny-2"))
        move_latest(s, Basis(task_id="a", kind="task", version=2))
    assert calls == [2, 2]
    assert _latest(reg) == 3
    with reg.db.session() as s:
        assert s.get(Task, "a").model == "tiny-2"
