"""Batch recomputation as a job: POST /v1/recompute queues one recompute job; the runner selects
the bases (digesting their inputs for stale_only, one progress step per basis), then queues one
basis job per selected basis; the job's result lists them."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select, update

from services import recompute as recompute_service
from services.models import Job
from storage.trajectory import TrajectoryStore
from tests.conftest import make_trajectory
from tests.services.helpers import add_task, run_jobs


def _ready_bases(api, app, tmp_path, layout):
    a = add_task(api, tmp_path, "a", layout, rows=6, seed=1)
    add_task(api, tmp_path, "b", layout, rows=6, seed=2)
    api.post("/v1/tasks", json={"id": "c", "model": "other", "layout": layout.to_dict()})
    for body in (
        ("a", {"kind": "task", "rank": 2}),
        ("b", {"kind": "task", "rank": 2}),
        ("a", {"kind": "unified", "rank": 2, "tasks": ["a", "b"]}),
        ("c", {"kind": "random", "rank": 2}),
    ):
        assert api.post(f"/v1/tasks/{body[0]}/bases", json=body[1]).status_code == 202
    run_jobs(app)
    return a


def _order(api, **body) -> dict:
    r = api.post("/v1/recompute", json=body)
    assert r.status_code == 202, r.text
    return r.json()


def _recompute(api, app, **body) -> dict:
    """Order a recompute, run it (only it: the basis jobs it queues stay pending), and return
    its result."""
    job = _order(api, **body)
    assert app.state.runner.run_pending(max_jobs=1) == [job["id"]]
    done = api.get(f"/v1/jobs/{job['id']}").json()
    assert done["status"] == "succeeded", done
    return done["result"]


def _pairs(items):
    return sorted((i["task_id"], i["kind"]) for i in items)


def _pending(app) -> int:
    with app.state.registry.db.session() as s:
        return s.scalar(select(func.count(Job.id)).where(Job.status == "pending"))


def test_the_request_queues_a_recompute_job_and_the_job_queues_one_job_per_basis(
    api, app, tmp_path, layout
):
    _ready_bases(api, app, tmp_path, layout)
    job = _order(api, kinds=["task", "unified", "random"])
    second = _order(api)  # runs after the first: what that one queued is pending by then
    assert (job["kind"], job["basis"], job["status"], job["result"]) == (
        "recompute",
        None,
        "pending",
        None,
    )
    assert job["params"] == {"task_ids": None, "model": None, "stale_only": False,
                             "dry_run": False, "kinds": ["task", "unified", "random"]}  # fmt: skip
    assert _pending(app) == 2  # the requests selected and queued nothing themselves
    assert app.state.runner.run_pending(max_jobs=1) == [job["id"]]
    done = api.get(f"/v1/jobs/{job['id']}").json()
    assert done["status"] == "succeeded" and done["progress"]["phase"] == "done"
    assert done["progress"]["phases"]["select"] == {"done": 4, "total": 4}
    result = done["result"]
    assert _pairs(result["queued"]) == [
        ("a", "task"),
        ("a", "unified"),
        ("b", "task"),
        ("c", "random"),
    ]
    assert all(i["version"] == 2 and i["previous_version"] == 1 for i in result["queued"])
    assert len({i["job_id"] for i in result["queued"]}) == 4 and _pending(app) == 5
    listed = api.get("/v1/jobs", params={"kind": "recompute"}).json()["items"]
    assert [j["id"] for j in listed] == [second["id"], job["id"]]
    # Queued ones are skipped by the second recompute, and the new versions carry the old params.
    assert app.state.runner.run_pending(max_jobs=1) == [second["id"]]
    again = api.get(f"/v1/jobs/{second['id']}").json()["result"]
    assert again["queued"] == [] and len(again["skipped"]) == 4
    assert {i["reason"] for i in again["skipped"]} == {"version 2 is already pending"}
    run_jobs(app)
    v2 = api.get("/v1/tasks/a/bases/unified").json()
    assert v2["version"] == 2 and v2["params"]["tasks"] == ["a", "b"] and v2["params"]["rank"] == 2


def test_filters_and_dry_run(api, app, tmp_path, layout):
    _ready_bases(api, app, tmp_path, layout)
    dry = {"dry_run": True}
    r = _recompute(api, app, **dry, task_ids=["a"])
    assert _pairs(r["queued"]) == [("a", "task"), ("a", "unified")]
    assert all(i["job_id"] is None and i["version"] == 2 for i in r["queued"])
    r = _recompute(api, app, **dry, kinds=["task"])
    assert _pairs(r["queued"]) == [("a", "task"), ("b", "task")]
    r = _recompute(api, app, **dry, model="other")
    assert _pairs(r["queued"]) == [("c", "random")]
    assert _pending(app) == 0


def test_stale_only_digests_in_the_job_not_the_request(api, app, tmp_path, layout, monkeypatch):
    a = _ready_bases(api, app, tmp_path, layout)
    digested = []
    digest = recompute_service.current_inputs_digest

    def counted(spec):
        digested.append((spec.task_id, spec.kind))
        return digest(spec)

    monkeypatch.setattr(recompute_service, "current_inputs_digest", counted)
    job = _order(api, stale_only=True)
    assert digested == []  # the request read no trajectory
    assert app.state.runner.run_pending(max_jobs=1) == [job["id"]]
    assert sorted(digested) == [("a", "task"), ("a", "unified"), ("b", "task")]
    done = api.get(f"/v1/jobs/{job['id']}").json()
    assert done["progress"]["phases"]["digest"] == {"done": 4, "total": 4}
    r = done["result"]
    assert r["queued"] == []
    reasons = {(i["task_id"], i["kind"]): i["reason"] for i in r["skipped"]}
    assert reasons[("a", "task")] == "up to date" and "random" in reasons[("c", "random")]

    # A new checkpoint for task a: its own basis and the unified one (last row of a) are stale.
    store = TrajectoryStore.open(a.url, read_only=False)
    store.append(make_trajectory(layout, 7, seed=9)[-1])
    r = _recompute(api, app, stale_only=True)
    assert _pairs(r["queued"]) == [("a", "task"), ("a", "unified")]
    assert {i["reason"] for i in r["queued"]} == {"inputs changed"}
    run_jobs(app)
    assert api.get("/v1/tasks/a/bases/task").json()["version"] == 2
    assert _recompute(api, app, stale_only=True)["queued"] == []


def test_failed_basis_counts_as_stale(api, app, tmp_path, layout):
    import shutil

    a = add_task(api, tmp_path, "a", layout, rows=5)
    api.post("/v1/tasks/a/bases", json={"kind": "task", "rank": 2})
    saved = tmp_path / "saved"
    shutil.copytree(a.url, saved)
    shutil.rmtree(a.url)
    run_jobs(app)
    assert api.get("/v1/tasks/a/bases/task", params={"version": 1}).json()["code"] == "not_ready"
    shutil.copytree(saved, a.url)
    r = _recompute(api, app, stale_only=True)
    assert [i["reason"] for i in r["queued"]] == ["version 1 failed"]
    run_jobs(app)
    assert api.get("/v1/tasks/a/bases/task").json()["version"] == 2


def test_bad_filters_are_422(api):
    assert api.post("/v1/recompute", json={"kinds": ["nope"]}).status_code == 422
    assert api.post("/v1/recompute", json={"task_ids": ["../x"]}).status_code == 422
    assert api.get("/v1/jobs").json()["total"] == 0


def test_a_pending_recompute_job_can_be_cancelled(api, app, tmp_path, layout):
    _ready_bases(api, app, tmp_path, layout)
    job = _order(api)
    r = api.post(f"/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
    assert run_jobs(app) == [] and _pending(app) == 0


def _set_job(app, job_id, **values):
    with app.state.registry.db.session() as s:
        s.execute(update(Job).where(Job.id == job_id).values(**values))


@pytest.mark.parametrize("interruption", ["cancel", "stop", "lease", "timeout"])
def test_a_running_recompute_stops_between_bases_and_queues_nothing(
    api, app, tmp_path, layout, monkeypatch, interruption
):
    """Cancel, runner shutdown, a lost lease and job_timeout_seconds reach a recompute at its
    next per-basis progress step, before it queued anything."""
    _ready_bases(api, app, tmp_path, layout)
    runner = app.state.runner
    if interruption == "timeout":  # the clock starts at the claim: over at the first step
        monkeypatch.setattr(app.state.registry.settings, "job_timeout_seconds", 1e-9)
    job = _order(api, stale_only=True)
    digest = recompute_service.current_inputs_digest

    def interrupted(spec):
        if interruption == "cancel":
            _set_job(app, job["id"], cancel_requested=True)
        elif interruption == "stop":
            runner.stopping = True
        elif interruption == "lease":
            _set_job(app, job["id"], owner="another-runner")
        return digest(spec)

    monkeypatch.setattr(recompute_service, "current_inputs_digest", interrupted)
    assert runner.claim() == job["id"]
    status = runner.run_job(job["id"])
    runner.stopping = False
    after = api.get(f"/v1/jobs/{job['id']}").json()
    expected = {
        "cancel": ("cancelled", "cancelled", "cancelled"),
        "stop": ("pending", "pending", None),  # re-queued, to run again at the next start
        "lease": ("lost", "running", None),  # the other runner's now: nothing written
        "timeout": ("failed", "failed", "job_timeout"),
    }[interruption]
    assert (status, after["status"], after["error_code"]) == expected, after
    assert after["result"] is None
    assert api.get("/v1/jobs", params={"kind": "basis", "status": "pending"}).json()["total"] == 0
    if interruption == "stop":
        monkeypatch.setattr(recompute_service, "current_inputs_digest", digest)
        assert run_jobs(app) == [job["id"]]
        assert api.get(f"/v1/jobs/{job['id']}").json()["status"] == "succeeded"
