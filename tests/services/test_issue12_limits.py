"""Issue 12, finding 6: a write token cannot tie up the job queue with one huge or endless job.

A basis order over `max_basis_values` is refused before anything is queued; a job stops at its
next progress step once it ran past `job_timeout_seconds`; a random basis reports progress per
block, not per layer, so cancel, shutdown and the timeout reach it inside one huge layer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from services import random_basis as rb
from services.models import Basis, Job
from tests.services.helpers import add_task, api_client, make_app, run_jobs
from worker.svd.random_basis import random_orthonormal


@pytest.fixture
def limited(tmp_path):
    def build(**settings):
        app = make_app(tmp_path, **settings)
        return app, api_client(app, "admin")

    return build


def test_an_order_over_max_basis_values_is_refused_before_queueing(limited, tmp_path, layout):
    size = sum(g.size for g in layout.groups)
    app, api = limited(max_basis_values=3 * size)
    add_task(api, tmp_path, "a", layout, rows=6, seed=4)
    r = api.post("/v1/tasks/a/bases", json={"kind": "random", "rank": 4})
    assert r.status_code == 422, r.text
    assert "max_basis_values" in r.json()["message"] and f"{4 * size:,}" in r.json()["message"]
    with app.state.registry.db.session() as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 0
        assert s.scalar(select(func.count()).select_from(Basis)) == 0
    r = api.post("/v1/tasks/a/bases", json={"kind": "random", "rank": 3})
    assert r.status_code == 202, r.text


def test_a_job_past_its_timeout_is_failed_and_leaves_nothing(limited, tmp_path, layout):
    app, api = limited(job_timeout_seconds=1e-6)
    add_task(api, tmp_path, "a", layout, rows=6, seed=4)
    r = api.post("/v1/tasks/a/bases", json={"kind": "task", "rank": 3})
    assert r.status_code == 202, r.text
    assert run_jobs(app) == [r.json()["id"]]
    job = api.get(f"/v1/jobs/{r.json()['id']}").json()
    assert job["status"] == "failed" and job["error_code"] == "job_timeout", job
    assert "job_timeout_seconds" in job["error"]
    with app.state.registry.db.session() as s:
        basis = s.get(Basis, s.get(Job, job["id"]).basis_id)
        assert basis.status == "failed"
        root = app.state.registry.settings.resolved_store_root
        assert not (Path(root) / basis.url).exists()


def test_a_random_layer_reports_progress_per_block(monkeypatch, tmp_path):
    monkeypatch.setattr(rb, "block_rows", lambda k: 256)
    calls = []
    rb.random_basis(
        str(tmp_path / "b"), {"one.big.layer": 2560}, 4, 0, progress=lambda *c: calls.append(c)
    )
    # 10 blocks, 2 passes: 20 steps inside one layer (before: a single call once it was done)
    assert calls == [("random", i, 20) for i in range(1, 21)]


def test_a_random_basis_stops_inside_a_layer_and_leaves_nothing(monkeypatch, tmp_path):
    monkeypatch.setattr(rb, "block_rows", lambda k: 256)

    class Cancelled(Exception):
        pass

    seen = []

    def progress(phase, done, total):
        seen.append(done)
        if done == 5:
            raise Cancelled

    with pytest.raises(Cancelled):
        rb.random_basis(str(tmp_path / "b"), {"one.big.layer": 2560}, 4, 0, progress=progress)
    assert seen == [1, 2, 3, 4, 5]
    assert not (tmp_path / "b").exists()


def test_ticks_do_not_change_the_basis():
    out = {}
    for tick in (None, lambda: None):
        q = np.empty((300, 5), dtype=np.float32)

        def write(name, a, b, block, q=q):
            q[a:b] = block

        random_orthonormal({"layer.0": 300}, 5, 7, write=write, tick=tick, rows_per_block=256)
        out[tick is None] = q
    assert np.array_equal(out[True], out[False])
