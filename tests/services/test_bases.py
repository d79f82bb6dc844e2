"""Ordering, computing and serving bases: the served bytes are the kernels' bytes."""

from __future__ import annotations

import numpy as np
import pytest

from services.random_basis import random_basis
from storage.basis import BasisStore
from tests.services.helpers import add_task, layer_bytes, run_jobs
from worker.svd.bases import multitask_bases, task_basis
from worker.svd.engine import BasisRequest, compute_bases, make_sources


def _order(api, task, **body):
    r = api.post(f"/v1/tasks/{task}/bases", json=body)
    assert r.status_code == 202, r.text
    return r.json()


def _raw(store: BasisStore) -> dict[str, bytes]:
    return {name: store.load(name).astype("<f4").tobytes() for name in store.layer_names}


@pytest.fixture
def two_tasks(api, tmp_path, layout):
    a = add_task(api, tmp_path, "a", layout, rows=8, seed=1)
    b = add_task(api, tmp_path, "b", layout, rows=6, seed=2)
    return a, b


def test_task_basis_is_served_byte_for_byte(api, app, tmp_path, two_tasks):
    a, _ = two_tasks
    job = _order(api, "a", kind="task", rank=4, mode="delta")
    assert job["status"] == "pending" and job["basis"] == {
        "task_id": "a",
        "kind": "task",
        "version": 1,
    }
    r = api.get("/v1/tasks/a/bases/task")
    assert r.status_code == 404  # no ready version yet
    r = api.get("/v1/tasks/a/bases/task", params={"version": 1})
    assert r.status_code == 409 and r.json()["code"] == "not_ready"
    assert run_jobs(app) == [job["id"]]
    done = api.get(f"/v1/jobs/{job['id']}").json()
    assert done["status"] == "succeeded" and done["attempts"] == 1
    assert set(done["progress"]["layers"].values()) == {"checksummed"}

    manifest = api.get("/v1/tasks/a/bases/task").json()
    assert manifest["version"] == 1 and manifest["aliases"] == ["latest"]
    assert manifest["params"]["selection"] == "all"
    ref = task_basis(a.url, str(tmp_path / "ref"), 4, mode="delta").bases[0]
    assert layer_bytes(api, manifest) == _raw(ref)
    for info in manifest["layers"]:
        assert info["sha256"] == ref.layer(info["name"]).sha256
        assert info["shape"] == [ref.layer(info["name"]).rows, 4]
        np.testing.assert_allclose(info["singular_values"], ref.layer(info["name"]).singular_values)
    assert manifest["inputs_digest"] == ref.manifest["inputs_digest"]


def test_unified_and_zeroshot_equal_the_kernels(api, app, tmp_path, two_tasks):
    a, b = two_tasks
    _order(api, "a", kind="unified", rank=2, tasks=["a", "b"], selection="last:2")
    _order(api, "a", kind="zeroshot", rank=2, tasks=["a", "b"], selection="last:2")
    run_jobs(app)
    unified = api.get("/v1/tasks/a/bases/unified").json()
    zeroshot = api.get("/v1/tasks/a/bases/zeroshot").json()
    assert unified["params"]["tasks"] == ["a", "b"]
    assert zeroshot["params"]["tasks"] == ["b"] and zeroshot["params"]["held_out"] == "a"

    ref = multitask_bases(
        {"a": a.url, "b": b.url}, str(tmp_path / "ref"), 2, selection="last:2", zeroshot=False
    ).bases[0]
    assert layer_bytes(api, unified) == _raw(ref)
    # Zero-shot for a = the basis of b's rows alone; a's rows are never read.
    ref_zs = compute_bases(
        make_sources([b], ["last:2"], "delta", ["b"]),
        [BasisRequest(str(tmp_path / "ref-zs"), 2, kind="zeroshot")],
    ).bases[0]
    assert layer_bytes(api, zeroshot) == _raw(ref_zs)


def test_global_basis(api, app, tmp_path, two_tasks):
    a, _ = two_tasks
    _order(api, "a", kind="global", rank=3)
    run_jobs(app)
    manifest = api.get("/v1/tasks/a/bases/global").json()
    assert manifest["params"]["scope"] == "global"
    ref = task_basis(a.url, str(tmp_path / "ref"), 3, scope="global").bases[0]
    assert layer_bytes(api, manifest) == _raw(ref)


def test_random_basis_is_seeded_orthonormal_and_needs_no_trajectory(api, app, tmp_path, layout):
    api.post("/v1/tasks", json={"id": "r", "model": "tiny", "layout": layout.to_dict()})
    _order(api, "r", kind="random", rank=5, seed=7)
    _order(api, "r", kind="random", rank=5, seed=8)
    run_jobs(app)
    v1 = api.get("/v1/tasks/r/bases/random", params={"version": 1}).json()
    v2 = api.get("/v1/tasks/r/bases/random", params={"version": 2}).json()
    got1, got2 = layer_bytes(api, v1), layer_bytes(api, v2)
    ref = random_basis(str(tmp_path / "ref"), {g.name: g.size for g in layout.groups}, 5, 7)
    assert got1 == _raw(ref)
    for name, raw in got1.items():
        q = np.frombuffer(raw, "<f4").reshape(layout.group(name).size, 5).astype(np.float64)
        assert np.abs(q.T @ q - np.eye(5)).max() < 1e-6
        assert raw != got2[name]


def test_versions_and_latest_alias(api, app, two_tasks):
    _order(api, "a", kind="task", rank=2)
    run_jobs(app)
    _order(api, "a", kind="task", rank=3)
    run_jobs(app)
    latest = api.get("/v1/tasks/a/bases/task").json()
    assert latest["version"] == 2 and latest["params"]["rank"] == 3
    versions = api.get("/v1/tasks/a/bases", params={"kind": "task"}).json()
    assert [v["version"] for v in versions["items"]] == [2, 1]
    # User aliases name ready versions and move in one request.
    r = api.put("/v1/tasks/a/bases/task/aliases/production", json={"version": 1})
    assert r.status_code == 200 and r.json()["version"] == 1
    prod = api.get("/v1/tasks/a/bases/task", params={"alias": "production"}).json()
    assert prod["version"] == 1 and prod["aliases"] == ["production"]
    api.put("/v1/tasks/a/bases/task/aliases/production", json={"version": 2})
    assert api.get("/v1/tasks/a/bases/task", params={"alias": "production"}).json()["version"] == 2
    aliases = {a["name"]: a["version"] for a in api.get("/v1/tasks/a/bases/task/aliases").json()}
    assert aliases == {"latest": 2, "production": 2}
    # Bad aliases: a missing version, 'latest', a bad name, a deleted alias.
    assert api.put("/v1/tasks/a/bases/task/aliases/x", json={"version": 9}).status_code == 404
    assert api.put("/v1/tasks/a/bases/task/aliases/latest", json={"version": 1}).status_code == 422
    assert (
        api.put("/v1/tasks/a/bases/task/aliases/Bad.Name", json={"version": 1}).status_code == 422
    )
    assert api.delete("/v1/tasks/a/bases/task/aliases/production").status_code == 204
    assert api.get("/v1/tasks/a/bases/task", params={"alias": "production"}).status_code == 404


def test_layer_ranges_etags_and_not_modified(api, app, two_tasks):
    _order(api, "a", kind="task", rank=4)
    run_jobs(app)
    manifest = api.get("/v1/tasks/a/bases/task").json()
    info = manifest["layers"][0]
    full = api.get(info["url"]).content
    assert len(full) == info["nbytes"]
    etag = f'"{info["sha256"]}"'
    r = api.get(info["url"], headers={"Range": "bytes=100-1099"})
    assert r.status_code == 206 and r.content == full[100:1100]
    assert r.headers["content-range"] == f"bytes 100-1099/{len(full)}"
    r = api.get(info["url"], headers={"Range": "bytes=-10"})
    assert r.status_code == 206 and r.content == full[-10:]
    r = api.get(info["url"], headers={"Range": f"bytes={len(full) - 3}-"})
    assert r.content == full[-3:]
    r = api.get(info["url"], headers={"Range": f"bytes={len(full)}-"})
    assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{len(full)}"
    r = api.get(info["url"], headers={"If-None-Match": etag})
    assert r.status_code == 304 and r.content == b""
    r = api.get(info["url"], headers={"Range": "bytes=0-9", "If-Range": '"stale"'})
    assert r.status_code == 200 and r.content == full
    head = api.head(info["url"])
    assert head.status_code == 200 and head.headers["etag"] == etag and head.content == b""
    # The manifest revalidates too.
    r = api.get("/v1/tasks/a/bases/task")
    r2 = api.get("/v1/tasks/a/bases/task", headers={"If-None-Match": r.headers["etag"]})
    assert r2.status_code == 304
    assert api.get(info["url"].replace(info["name"], "layer.7")).status_code == 404


@pytest.mark.parametrize(
    "body, code",
    [
        ({"kind": "task", "rank": 99}, 422),  # more than the 7 checkpoints
        ({"kind": "task", "rank": 0}, 422),
        ({"kind": "task", "mode": "weird"}, 422),
        ({"kind": "task", "selection": "every:0"}, 422),
        ({"kind": "task", "selection": [0, 99]}, 422),
        ({"kind": "unified"}, 422),  # needs tasks
        ({"kind": "unified", "tasks": ["a", "ghost"]}, 404),
        ({"kind": "zeroshot", "tasks": ["a"]}, 422),
        ({"kind": "task", "executor": "ray"}, 422),  # not configured
        ({"kind": "random", "rank": 5000}, 422),
        ({"kind": "bogus"}, 422),
        ({"kind": "task", "extra": 1}, 422),
    ],
)
def test_bad_orders_create_nothing(api, app, two_tasks, body, code):
    r = api.post("/v1/tasks/a/bases", json=body)
    assert r.status_code == code, r.text
    assert api.get("/v1/tasks/a/bases").json()["total"] == 0
    assert api.get("/v1/jobs").json()["total"] == 0


def test_unified_needs_one_layout(api, app, tmp_path, layout, two_tasks):
    from storage.layout import build_layout

    other = build_layout([("encoder.layer.0.w", (9,)), ("encoder.layer.1.w", (4,))])
    add_task(api, tmp_path, "c", other, rows=4)
    r = api.post("/v1/tasks/a/bases", json={"kind": "unified", "tasks": ["a", "c"]})
    assert r.status_code == 422 and r.json()["code"] == "layout_mismatch"
