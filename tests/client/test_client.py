"""The Python client against the real app (FastAPI's TestClient passed as `http=`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import client as client_pkg
from client import Client, PulledBasis
from client.retry import RetriesExhausted, RetryPolicy
from storage.arrays import flatten_state
from storage.basis import BasisStore
from storage.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    StorageError,
    Unauthorized,
)
from storage.trajectory import TrajectoryStore
from tests.conftest import make_trajectory
from tests.services.helpers import token_for, write_store
from worker.svd.bases import task_basis


def test_all_lists_the_public_names():
    assert client_pkg.__all__ == sorted(client_pkg.__all__)
    for name in client_pkg.__all__:
        assert getattr(client_pkg, name) is not None
    assert {"Client", "Job", "PulledBasis"} <= set(dir(client_pkg))
    with pytest.raises(AttributeError):
        client_pkg.nope  # noqa: B018


def _task_with_rows(client, tmp_path, layout, task_id="a", rows=6, seed=0):
    store = write_store(tmp_path, task_id, layout, rows=rows, seed=seed)
    client.create_task(task_id, model="tiny", layout=layout)
    client.register_trajectory(task_id, store.url)
    return store


def test_trajectory_follows_every_page(client, tmp_path, layout):
    hashes = [r.sha256 for r in _task_with_rows(client, tmp_path, layout, rows=7).rows]
    traj = client.trajectory("a", page_size=3)
    assert traj["row_sha256"] == hashes and traj["rows"] == traj["total"] == 7
    assert traj["offset"] == 0 and traj["next_offset"] is None
    page = client.trajectory_page("a", offset=3, limit=2)
    assert page["row_sha256"] == hashes[3:5] and page["next_offset"] == 5


def _ready_basis(client, tmp_path, layout, rank=3):
    store = _task_with_rows(client, tmp_path, layout)
    job = client.compute_basis("a", "task", rank=rank)
    assert job.wait(timeout=60).status == "succeeded"
    return store


def test_upload_from_local_store_is_resumable_and_idempotent(client, tmp_path, layout):
    local = write_store(tmp_path / "local", "a", layout, rows=6, seed=5)
    client.create_task("a", model="tiny", layout=layout)
    # An earlier, interrupted upload: rows 0-2 committed, row 3 half staged.
    first = [{g: local.read_row(i, g) for g in layout.group_names} for i in range(4)]
    client.upload_trajectory("a", first[:3], part_bytes=1024)
    g0 = layout.group_names[0]
    client.request(
        "PUT",
        f"/v1/tasks/a/trajectory/rows/3/groups/{g0}",
        params={"offset": 0},
        content=first[3][g0][:100].tobytes(),
    )
    client.requests.clear()
    status = client.upload_trajectory("a", local.url, part_bytes=1024)
    assert status["rows"] == 6 and status["staged"] == {}
    puts = [p for m, p, _ in client.requests if m == "PUT"]
    assert not any("/rows/0/" in p or "/rows/2/" in p for p in puts)  # committed: not resent
    server_store = TrajectoryStore.open(status["url"])
    assert [r.sha256 for r in server_store.rows] == [r.sha256 for r in local.rows]
    assert [r.step for r in server_store.rows][3:] == [30, 40, 50]  # rows 0-2 came as arrays
    # Running it again sends no values at all.
    client.requests.clear()
    client.upload_trajectory("a", local)
    assert [m for m, _, _ in client.requests if m == "PUT"] == []


def test_upload_refuses_rows_that_differ_or_are_bad(client, tmp_path, layout):
    client.create_task("a", model="tiny", layout=layout)
    rows = make_trajectory(layout, 3, seed=1)
    client.upload_trajectory("a", rows)
    other = make_trajectory(layout, 3, seed=2)
    client.requests.clear()
    with pytest.raises(Conflict):
        client.upload_trajectory("a", other)
    assert [m for m, _, _ in client.requests if m == "PUT"] == []
    bad = make_trajectory(layout, 4, seed=1)
    bad[3][layout.group_names[1]][7] = np.nan
    with pytest.raises(InvalidInput):
        client.upload_trajectory("a", bad)
    assert client.trajectory("a")["rows"] == 3 and client.trajectory("a")["staged"] == {}


def test_upload_from_checkpoint_folder(client, tmp_path, layout):
    from safetensors.numpy import save_file

    rows = make_trajectory(layout, 4, seed=3)

    def state(row):
        out = {}
        for g in layout.groups:
            for spec, full in zip(g.params, g.full_names(), strict=True):
                out["bert." + full] = row[g.name][spec.offset : spec.offset + spec.numel].reshape(
                    spec.shape
                )
        out["bert.embeddings.word_embeddings.weight"] = np.zeros((3, 2), np.float32)
        return out

    save_file(state(rows[0]), str(tmp_path / "theta0.safetensors"))
    for i, row in enumerate(rows[1:], start=1):
        (tmp_path / "run" / f"checkpoint-{i * 50}").mkdir(parents=True)
        save_file(state(row), str(tmp_path / "run" / f"checkpoint-{i * 50}" / "model.safetensors"))
    client.create_task("a", model="tiny", layout=layout)
    status = client.upload_trajectory("a", tmp_path / "run", base=tmp_path / "theta0.safetensors")
    store = TrajectoryStore.open(status["url"])
    assert [r.step for r in store.rows] == [0, 50, 100, 150]
    for i, row in enumerate(rows):
        expect = flatten_state(state(row), layout)
        for g in layout.group_names:
            np.testing.assert_array_equal(store.read_row(i, g), expect[g])


def test_compute_pull_load_equal_the_kernel(client, tmp_path, layout):
    store = _ready_basis(client, tmp_path, layout)
    ref = task_basis(store.url, str(tmp_path / "ref"), 3).bases[0]
    pulled = client.pull_basis("a", "task")
    assert isinstance(pulled, PulledBasis) and pulled.version == 1
    for name in ref.layer_names:
        assert pulled.files[name].name == ref.layer(name).sha256
        assert pulled.files[name].read_bytes() == ref.load(name).tobytes()
        assert isinstance(pulled.array(name), np.memmap)
    tensors = client.load_basis("a", "task")
    assert list(tensors) == ref.layer_names
    for name, t in tensors.items():
        assert t.dtype == torch.float32 and t.shape == ref.load(name).shape
        assert torch.equal(t, torch.from_numpy(ref.load(name)))
    t = client.load_basis("a", "task", layers=["layer.1"])["layer.1"]
    t.zero_()  # copy-on-write: the cache is untouched
    assert pulled.files["layer.1"].read_bytes() == ref.load("layer.1").tobytes()


def test_warm_pull_makes_no_body_transfer(client, tmp_path, layout):
    _ready_basis(client, tmp_path, layout)
    client.pull_basis("a", "task")
    client.requests.clear()
    again = client.pull_basis("a", "task")
    assert [(m, p) for m, p, _ in client.requests] == [("GET", "/v1/tasks/a/bases/task")]
    assert "if-none-match" in client.requests[0][2]
    assert again.version == 1
    # A new version moves `latest`: the manifest changes and only then are layers fetched.
    client.compute_basis("a", "task", rank=2).wait(timeout=60)
    client.requests.clear()
    assert client.pull_basis("a", "task").version == 2
    assert sum("/layers/" in p for _, p, _ in client.requests) == 2
    assert client.pull_basis("a", "task", version=1).version == 1


def test_offline_from_cache(client, tmp_path, layout, admin_token):
    import httpx

    _ready_basis(client, tmp_path, layout)
    pulled = client.pull_basis("a", "task")
    # The same server, now unreachable: "testserver" does not resolve outside the TestClient.
    down = httpx.Client(timeout=2.0)
    offline = Client(
        "http://testserver",
        token=admin_token,
        cache_dir=tmp_path / "cache",
        http=down,
        retries=RetryPolicy(backoff=0.01),
    )
    # Explicitly offline: no network at all; and a server that is down falls back to the cache.
    assert offline.pull_basis("a", "task", local_files_only=True).files == pulled.files
    assert offline.pull_basis("a", "task").files == pulled.files
    assert torch.equal(
        offline.load_basis("a", "task", local_files_only=True)["layer.0"],
        torch.from_numpy(pulled.array("layer.0")),
    )
    with pytest.raises(NotFound):
        offline.pull_basis("a", "task", version=7, local_files_only=True)
    with pytest.raises(RetriesExhausted):  # an httpx.TransportError, after 5 tries
        offline.pull_basis("a", "task", version=7)  # nothing cached to fall back on
    empty = Client("http://testserver", cache_dir=tmp_path / "empty", http=down)
    with pytest.raises(NotFound):
        empty.pull_basis("a", "task", local_files_only=True)


def test_interrupted_download_resumes_with_range(client, tmp_path, layout):
    _ready_basis(client, tmp_path, layout)
    pulled = client.pull_basis("a", "task", layers=["layer.0"])
    blob = pulled.files["layer.0"]
    data = blob.read_bytes()
    blob.unlink()
    blob.with_name(blob.name + ".incomplete").write_bytes(data[: len(data) // 2])
    client.requests.clear()
    again = client.pull_basis("a", "task", layers=["layer.0"])
    assert again.files["layer.0"].read_bytes() == data
    layer_gets = [h for _, p, h in client.requests if "/layers/" in p]
    assert layer_gets[0]["range"] == f"bytes={len(data) // 2}-"


def test_corrupt_chunk_on_the_server_is_never_cached(client, server, tmp_path, layout):
    import pathlib

    _ready_basis(client, tmp_path, layout)
    manifest = client.basis("a", "task")
    url = server[0].state.registry.settings.resolved_store_root + "/bases/a/task/v1"
    chunk = next(
        p
        for p in sorted(pathlib.Path(url, "layer.0").rglob("*"))
        if p.is_file() and p.name != "zarr.json"
    )
    raw = bytearray(chunk.read_bytes())
    raw[10] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    with pytest.raises(StorageError):
        client.pull_basis("a", "task", layers=["layer.0"])
    sha = manifest["layers"][0]["sha256"]
    assert not client.cache.blob_path(sha).exists()


def test_server_errors_come_back_as_the_same_types(client, server, tmp_path, layout):
    with pytest.raises(NotFound) as exc:
        client.get_task("ghost")
    assert isinstance(exc.value, KeyError) and exc.value.status_code == 404
    client.create_task("a", model="tiny", layout=layout)
    with pytest.raises(Conflict):
        client.create_task("a", model="other", layout=layout)
    with pytest.raises(InvalidInput):
        client.create_task("Bad/Id", model="tiny", layout=layout)
    with pytest.raises(Unauthorized):
        Client("http://testserver", token="tsk_nope", http=server[1]).get_task("a")
    reader = Client("http://testserver", token=token_for(server[0], "read"), http=server[1])
    with pytest.raises(Forbidden):
        reader.compute_basis("a", "random")


def test_failed_job_raises_its_error(client, server, tmp_path, layout):
    import shutil

    store = _task_with_rows(client, tmp_path, layout)
    runner = server[0].state.runner
    runner.stop()  # run the job by hand, after the store is gone
    job = client.compute_basis("a", "task", rank=2)
    shutil.rmtree(store.url)
    runner.stopping = False
    runner.run_pending()
    with pytest.raises(NotFound):
        job.wait(timeout=60)
    assert job.status == "failed" and job.error_code == "not_found"
    assert client.jobs(status="failed")[0].id == job.id


def test_recompute_aliases_and_listing(client, tmp_path, layout):
    _ready_basis(client, tmp_path, layout)
    result = client.recompute(task_ids=["a"])
    assert [i["version"] for i in result["queued"]] == [2]
    client.job(result["queued"][0]["job_id"]).wait(timeout=60)
    client.set_alias("a", "task", "production", 1)
    assert client.pull_basis("a", "task", alias="production").version == 1
    assert {a["name"]: a["version"] for a in client.aliases("a", "task")} == {
        "latest": 2,
        "production": 1,
    }
    assert [b["version"] for b in client.list_bases("a", "task")] == [2, 1]
    assert [j.status for j in client.jobs(task_id="a")] == ["succeeded", "succeeded"]
    assert [t["id"] for t in client.iter_tasks(page_size=1)] == ["a"]
    with pytest.raises(NotFound):
        client.pull_basis("a", "task", layers=["layer.9"])


def test_store_sha_matches_manifest(client, tmp_path, layout):
    _ready_basis(client, tmp_path, layout)
    manifest = client.basis("a", "task")
    url = client.trajectory("a")["url"]
    assert url.endswith("stores/a")
    for info in manifest["layers"]:
        assert (
            info["dtype"] == "float32" and info["nbytes"] == 4 * info["shape"][0] * info["shape"][1]
        )
    assert BasisStore  # imported for the type in other tests
