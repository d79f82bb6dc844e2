"""The registry's tables on a real PostgreSQL server (skipped, with the reason, where this
machine cannot run one; the topology test then falls back to SQLite).

SQLite forgives what PostgreSQL does not: VARCHAR lengths, naive vs aware timestamps, JSON
validity, and it serialises all writers, so a race in the job claim never shows there. These
tests run the registry's own code against PostgreSQL: a full order-compute-serve cycle, type
round trips, and many runners claiming jobs at the same time from separate connection pools.
"""

from __future__ import annotations

import threading
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from services.context import Registry
from services.db import Database
from services.jobs import JobRunner
from services.models import Basis, Job, Task, Token, utcnow
from services.settings import Settings
from tests.services.helpers import (
    add_task,
    api_client,
    layer_bytes,
    make_app,
    run_jobs,
    small_layout,
)
from worker.svd.bases import task_basis

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture
def database_url(postgres, request):
    name = "t_" + "".join(ch if ch.isalnum() else "_" for ch in request.node.name)[:50].lower()
    return postgres.create_database(name)


@pytest.fixture
def layout_small():
    return small_layout()


def test_registry_cycle_on_postgres(database_url, tmp_path, layout_small):
    app = make_app(tmp_path, database_url=database_url)
    assert app.state.registry.db.engine.dialect.name == "postgresql"
    api = api_client(app, "admin")
    store = add_task(api, tmp_path, "a", layout_small, rows=6, seed=3)
    r = api.post("/v1/tasks/a/bases", json={"kind": "task", "rank": 3})
    assert r.status_code == 202, r.text
    assert len(run_jobs(app)) == 1
    manifest = api.get("/v1/tasks/a/bases/task").json()
    ref = task_basis(store.url, str(tmp_path / "ref"), 3).bases[0]
    assert layer_bytes(api, manifest) == {n: ref.load(n).tobytes() for n in ref.layer_names}
    # A second version, an alias on the first, and the listing sees both.
    api.post("/v1/tasks/a/bases", json={"kind": "task", "rank": 2})
    run_jobs(app)
    assert api.put("/v1/tasks/a/bases/task/aliases/paper", json={"version": 1}).status_code == 200
    items = api.get("/v1/tasks/a/bases", params={"kind": "task"}).json()["items"]
    assert {(b["version"], tuple(b["aliases"])) for b in items} == {
        (1, ("paper",)),
        (2, ("latest",)),
    }


def test_types_round_trip(database_url):
    db = Database(database_url)
    db.migrate()
    aware = datetime(2026, 5, 1, 12, 30, 15, 123456, tzinfo=UTC)
    layout = {"rule": "bert", "groups": [{"name": "layer.0", "params": [["w", [3, 4], 0]]}]}
    try:
        with db.session() as s:
            s.add(Task(id="t" * 64, model="m" * 200, layout_hash="h" * 64, layout=layout,
                       description="é" * 5000, created_at=aware))  # fmt: skip
            s.add(Token(name="n", token_hash="0" * 64, scopes=["read", "write"]))
        with db.session() as s:
            task = s.get(Task, "t" * 64)
            assert task.layout == layout and task.created_at == aware
            assert task.created_at.tzinfo is not None
            assert s.scalar(select(Token.scopes)) == ["read", "write"]
    finally:
        db.dispose()


def _queue(registry: Registry, n: int) -> list[int]:
    with registry.db.session() as s:
        s.add(Task(id="q", model="m", layout_hash="h", layout={}))
        s.flush()
        jobs = []
        for v in range(1, n + 1):
            basis = Basis(task_id="q", kind="task", version=v, params={}, url=f"/x/{v}")
            s.add(basis)
            s.flush()
            jobs.append(Job(basis_id=basis.id, progress={}))
        s.add_all(jobs)
        s.flush()
        return [j.id for j in jobs]


def test_concurrent_claims_take_each_job_once(database_url, tmp_path):
    """Eight runners, each with its own connection pool (as separate processes would have),
    claim 60 jobs at once: every job is claimed exactly once, by one owner, attempt 1."""
    settings = Settings(database_url=database_url, store_root=str(tmp_path / "store"))
    registries = [Registry.from_settings(settings, Database(database_url)) for _ in range(8)]
    runners = [JobRunner(r) for r in registries]
    job_ids = _queue(registries[0], 60)
    claimed: dict[str, list[int]] = {r.owner: [] for r in runners}
    start = threading.Barrier(len(runners))

    def claim_all(runner: JobRunner) -> None:
        start.wait()
        while (job_id := runner.claim()) is not None:
            claimed[runner.owner].append(job_id)

    threads = [threading.Thread(target=claim_all, args=(r,)) for r in runners]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        taken = Counter(j for ids in claimed.values() for j in ids)
        assert sorted(taken) == sorted(job_ids) and set(taken.values()) == {1}
        with registries[0].db.session() as s:
            rows = s.execute(select(Job.id, Job.owner, Job.attempts, Job.status)).all()
            statuses = set(s.scalars(select(Basis.status)))
        owner_of = {j: o for o, ids in claimed.items() for j in ids}
        assert all(r.owner == owner_of[r.id] and r.attempts == 1 for r in rows)
        assert {r.status for r in rows} == {"running"} and statuses == {"running"}
        assert sum(1 for ids in claimed.values() if ids) > 1  # the runners really competed
    finally:
        for r in registries:
            r.db.dispose()


def test_stale_heartbeat_is_requeued(database_url, tmp_path):
    """The lease check compares stored timestamps with now() - lease on the server's types."""
    settings = Settings(database_url=database_url, store_root=str(tmp_path / "store"))
    registry = Registry.from_settings(settings)
    try:
        runner = JobRunner(registry)
        stale, fresh = _queue(registry, 2)
        assert runner.claim() == stale and runner.claim() == fresh
        with registry.db.session() as s:
            s.execute(
                update(Job)
                .where(Job.id == stale)
                .values(heartbeat_at=utcnow() - timedelta(seconds=120))
            )
        assert runner.requeue_orphans(older_than=60) == [stale]
        with registry.db.session() as s:
            assert s.get(Job, stale).status == "pending" and s.get(Job, fresh).status == "running"
    finally:
        registry.db.dispose()


def test_the_pending_job_cap_holds_across_processes(database_url, tmp_path, layout_small):
    """Four apps on one database (four registry processes: no process-local lock is shared)
    take one token's orders at the same moment: the token's row, locked FOR UPDATE until each
    order commits, lets exactly `max_pending_jobs_per_token` through."""
    from fastapi.testclient import TestClient

    from tests.services.helpers import auth, token_for

    apps = [
        make_app(tmp_path, database_url=database_url, max_pending_jobs_per_token=3)
        for _ in range(4)
    ]
    add_task(api_client(apps[0], "admin"), tmp_path, "a", layout_small, rows=6, seed=3)
    headers = auth(token_for(apps[0], "write"))
    clients = [TestClient(app, headers=headers) for app in apps for _ in range(2)]
    start = threading.Barrier(len(clients))
    statuses: list[int] = []

    def order(http: TestClient) -> None:
        start.wait()
        r = http.post("/v1/tasks/a/bases", json={"kind": "random", "rank": 2})
        statuses.append(r.status_code)

    threads = [threading.Thread(target=order, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert sorted(statuses) == [202] * 3 + [429] * 5
        with apps[0].state.registry.db.session() as s:
            assert len(s.scalars(select(Job.id)).all()) == 3
    finally:
        for app in apps:
            app.state.registry.db.dispose()
