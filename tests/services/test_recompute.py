"""Batch recomputation: filters, stale detection from the inputs digest, one job per basis."""

from __future__ import annotations

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


def _pairs(items):
    return sorted((i["task_id"], i["kind"]) for i in items)


def test_recompute_all_queues_one_job_per_basis(api, app, tmp_path, layout):
    _ready_bases(api, app, tmp_path, layout)
    result = api.post("/v1/recompute", json={}).json()
    assert _pairs(result["queued"]) == [
        ("a", "task"),
        ("a", "unified"),
        ("b", "task"),
        ("c", "random"),
    ]
    assert all(i["version"] == 2 and i["previous_version"] == 1 for i in result["queued"])
    assert len({i["job_id"] for i in result["queued"]}) == 4
    # Queued ones are skipped by a second call, and the new versions carry the old parameters.
    again = api.post("/v1/recompute", json={}).json()
    assert again["queued"] == [] and len(again["skipped"]) == 4
    run_jobs(app)
    v2 = api.get("/v1/tasks/a/bases/unified").json()
    assert v2["version"] == 2 and v2["params"]["tasks"] == ["a", "b"] and v2["params"]["rank"] == 2


def test_filters(api, app, tmp_path, layout):
    _ready_bases(api, app, tmp_path, layout)
    dry = {"dry_run": True}
    r = api.post("/v1/recompute", json={**dry, "task_ids": ["a"]}).json()
    assert _pairs(r["queued"]) == [("a", "task"), ("a", "unified")]
    assert all(i["job_id"] is None for i in r["queued"])
    r = api.post("/v1/recompute", json={**dry, "kinds": ["task"]}).json()
    assert _pairs(r["queued"]) == [("a", "task"), ("b", "task")]
    r = api.post("/v1/recompute", json={**dry, "model": "other"}).json()
    assert _pairs(r["queued"]) == [("c", "random")]
    assert api.get("/v1/jobs", params={"status": "pending"}).json()["total"] == 0


def test_stale_only_picks_bases_whose_inputs_changed(api, app, tmp_path, layout):
    a = _ready_bases(api, app, tmp_path, layout)
    r = api.post("/v1/recompute", json={"stale_only": True}).json()
    assert r["queued"] == []
    reasons = {(i["task_id"], i["kind"]): i["reason"] for i in r["skipped"]}
    assert reasons[("a", "task")] == "up to date" and "random" in reasons[("c", "random")]

    # A new checkpoint for task a: its own basis and the unified one (last row of a) are stale.
    store = TrajectoryStore.open(a.url, read_only=False)
    store.append(make_trajectory(layout, 7, seed=9)[-1])
    r = api.post("/v1/recompute", json={"stale_only": True}).json()
    assert _pairs(r["queued"]) == [("a", "task"), ("a", "unified")]
    assert {i["reason"] for i in r["queued"]} == {"inputs changed"}
    run_jobs(app)
    assert api.get("/v1/tasks/a/bases/task").json()["version"] == 2
    assert api.post("/v1/recompute", json={"stale_only": True}).json()["queued"] == []


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
    r = api.post("/v1/recompute", json={"stale_only": True}).json()
    assert [i["reason"] for i in r["queued"]] == ["version 1 failed"]
    run_jobs(app)
    assert api.get("/v1/tasks/a/bases/task").json()["version"] == 2


def test_bad_filters_are_422(api):
    assert api.post("/v1/recompute", json={"kinds": ["nope"]}).status_code == 422
    assert api.post("/v1/recompute", json={"task_ids": ["../x"]}).status_code == 422
