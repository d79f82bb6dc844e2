"""Issue 12, finding 6: a write token cannot fill the job queue. Each job records the token that
ordered it, and a write token with `max_pending_jobs_per_token` jobs pending or running is
answered 429 (code too_many_jobs, Retry-After) and queues nothing; a recompute it ordered queues
only the room left. Admin tokens are not capped."""

from __future__ import annotations

import threading

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from client.errors import error_from_body
from services.models import Job, Token
from storage.errors import ERROR_TYPES, TooManyJobs
from tests.services.helpers import add_task, auth, make_app, run_jobs, token_for


@pytest.fixture
def registry(tmp_path, layout):
    """An app capped at 2 pending jobs per token, task 'a' with a trajectory, and clients."""
    app = make_app(tmp_path, max_pending_jobs_per_token=2)
    admin = TestClient(app, headers=auth(token_for(app, "admin", name="admin")))
    add_task(admin, tmp_path, "a", layout, rows=6, seed=4)

    def writer(name: str) -> TestClient:
        return TestClient(app, headers=auth(token_for(app, "write", name=name)))

    return app, admin, writer


RANDOM = {"kind": "random", "rank": 2}


def _jobs(app) -> int:
    with app.state.registry.db.session() as s:
        return s.scalar(select(func.count(Job.id)))


def test_orders_over_the_cap_are_429_with_retry_after_and_queue_nothing(registry):
    app, _, writer = registry
    alice = writer("alice")
    first = alice.post("/v1/tasks/a/bases", json=RANDOM)
    assert first.status_code == 202, first.text
    assert alice.post("/v1/tasks/a/bases", json=RANDOM).status_code == 202
    refused = alice.post("/v1/tasks/a/bases", json=RANDOM)
    assert refused.status_code == 429, refused.text
    assert refused.headers["Retry-After"] == "30"
    body = refused.json()
    assert body["code"] == "too_many_jobs"
    assert "max_pending_jobs_per_token = 2" in body["message"]
    assert body["detail"] == {"pending": 2, "limit": 2, "retry_after": 30}
    assert _jobs(app) == 2
    assert alice.post("/v1/recompute", json={}).status_code == 429  # a recompute is a job too
    assert _jobs(app) == 2
    versions = alice.get("/v1/tasks/a/bases", params={"kind": "random"}).json()
    assert versions["total"] == 2

    # A running job still counts; a finished one does not.
    runner = app.state.runner
    assert runner.claim() == first.json()["id"]
    assert alice.post("/v1/tasks/a/bases", json=RANDOM).status_code == 429
    runner.run_job(first.json()["id"])
    assert alice.post("/v1/tasks/a/bases", json=RANDOM).status_code == 202


def test_the_cap_is_per_token_and_jobs_record_their_token(registry):
    app, _, writer = registry
    alice, bob = writer("alice"), writer("bob")
    for _ in range(2):
        assert alice.post("/v1/tasks/a/bases", json=RANDOM).status_code == 202
    assert alice.post("/v1/tasks/a/bases", json=RANDOM).status_code == 429
    assert bob.post("/v1/tasks/a/bases", json=RANDOM).status_code == 202
    with app.state.registry.db.session() as s:
        owners = s.execute(
            select(Token.name, func.count(Job.id)).join(Job, Job.token_id == Token.id)
            .group_by(Token.name)
        ).all()  # fmt: skip
    assert dict(owners) == {"alice": 2, "bob": 1}


def test_admin_tokens_are_not_capped(registry):
    app, admin, _ = registry
    for _ in range(4):
        assert admin.post("/v1/tasks/a/bases", json=RANDOM).status_code == 202
    assert admin.post("/v1/recompute", json={"dry_run": True}).status_code == 202
    assert _jobs(app) == 5


def test_a_recompute_queues_only_the_room_its_token_has_left(registry, tmp_path, layout):
    app, admin, writer = registry
    for task in ("b", "c"):
        add_task(admin, tmp_path, task, layout, rows=6, seed=5)
    for task in ("a", "b", "c"):
        assert admin.post(f"/v1/tasks/{task}/bases", json=RANDOM).status_code == 202
    run_jobs(app)
    alice = writer("alice")
    job = alice.post("/v1/recompute", json={}).json()
    assert app.state.runner.run_pending(max_jobs=1) == [job["id"]]
    result = alice.get(f"/v1/jobs/{job['id']}").json()["result"]
    # The recompute job itself no longer counts once it queues: room for 2 of the 3 bases.
    assert [i["task_id"] for i in result["queued"]] == ["a", "b"]
    (skipped,) = result["skipped"]
    assert skipped["task_id"] == "c" and "max_pending_jobs_per_token (2" in skipped["reason"]


def test_concurrent_orders_of_one_token_do_not_overshoot_the_cap(registry):
    app, _, writer = registry
    alice = writer("alice")
    start = threading.Barrier(6)
    statuses: list[int] = []

    def order() -> None:
        start.wait()
        statuses.append(alice.post("/v1/tasks/a/bases", json=RANDOM).status_code)

    threads = [threading.Thread(target=order) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(statuses) == [202, 202, 429, 429, 429, 429]
    assert _jobs(app) == 2


def test_the_client_rebuilds_too_many_jobs():
    assert ERROR_TYPES["too_many_jobs"] is TooManyJobs
    body = {"code": "too_many_jobs", "message": "m", "detail": {"retry_after": 30}}
    exc = error_from_body(429, body)
    assert type(exc) is TooManyJobs and exc.status_code == 429 and exc.detail == body["detail"]
