"""Issue 12, item 4: committing an uploaded row streams its staged parts into the store block by
block, so the server's memory does not grow with the row (a group may hold 2^33 values)."""

from __future__ import annotations

import hashlib
import tracemalloc

import numpy as np
import pytest

from storage.layout import build_layout
from storage.trajectory import TrajectoryStore

BIG = 8 << 20  # values in the big group: 32 MiB of float32 in parts
PART = 2 << 20  # values per part: 8 MiB
PEAK_BOUND = 8 << 20  # bytes; the row-at-once commit peaked at 40.1 MiB here


def _layout():
    return build_layout(
        [("encoder.layer.0.attention.weight", (2048, 4096)), ("encoder.layer.1.bias", (30,))]
    )


def _upload(api, task, row, vectors):
    for g, vec in vectors.items():
        for a in range(0, vec.size, PART):
            r = api.put(
                f"/v1/tasks/{task}/trajectory/rows/{row}/groups/{g}",
                params={"offset": a},
                content=np.ascontiguousarray(vec[a : a + PART], dtype="<f4").tobytes(),
                headers={"Content-Type": "application/octet-stream"},
            )
            assert r.status_code == 200, r.text


def _create(api, layout, task="big", **body):
    r = api.post("/v1/tasks", json={"id": task, "model": "tiny", "layout": layout.to_dict()})
    assert r.status_code == 201, r.text
    r = api.post(f"/v1/tasks/{task}/trajectory", json=body)
    assert r.status_code == 201, r.text
    return r


def _vectors(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "layer.0": rng.standard_normal(BIG, dtype=np.float32),
        "layer.1": rng.standard_normal(30, dtype=np.float32),
    }


def _commit_peak(api, task, row, **body):
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        r = api.post(f"/v1/tasks/{task}/trajectory/rows/{row}/commit", json={"step": row, **body})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert r.status_code == 200, r.text
    return r.json(), peak


def test_commit_of_a_large_row_has_bounded_memory(api):
    _create(api, _layout())
    vectors = _vectors()
    _upload(api, "big", 0, vectors)
    info, peak = _commit_peak(api, "big", 0)
    assert peak < PEAK_BOUND, f"commit peaked at {peak / 2**20:.1f} MiB"
    # The recorded sha256 is numpy's of the whole row, as before the commit streamed.
    for g, vec in vectors.items():
        assert info["sha256"][g] == hashlib.sha256(vec.astype("<f4").tobytes()).hexdigest()
    traj = api.get("/v1/tasks/big/trajectory").json()
    store = TrajectoryStore.open(traj["url"])
    assert store.num_rows == 1 and store.verify() == []
    for g, vec in vectors.items():
        np.testing.assert_array_equal(store.read_row(0, g), vec)
    # Committing again is idempotent and returns the same row.
    again, _ = _commit_peak(api, "big", 0)
    assert again["sha256"] == info["sha256"]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_streamed_commit_hashes_the_stored_dtype(api, dtype):
    layout = build_layout(
        [("encoder.layer.0.attention.weight", (300, 1000)), ("encoder.layer.1.bias", (30,))]
    )
    _create(api, layout, dtype=dtype, chunk_cols=1024)
    rng = np.random.default_rng(1)
    vectors = {"layer.0": rng.standard_normal(300_000, dtype=np.float32), "layer.1": np.ones(30)}
    for g, vec in vectors.items():
        for a in range(0, vec.size, 70_001):  # parts not aligned to the store's chunks
            r = api.put(
                f"/v1/tasks/big/trajectory/rows/0/groups/{g}",
                params={"offset": a},
                content=np.ascontiguousarray(vec[a : a + 70_001], dtype="<f4").tobytes(),
                headers={"Content-Type": "application/octet-stream"},
            )
            assert r.status_code == 200, r.text
    r = api.post("/v1/tasks/big/trajectory/rows/0/commit", json={"step": 0})
    assert r.status_code == 200, r.text
    url = api.get("/v1/tasks/big/trajectory").json()["url"]
    store = TrajectoryStore.open(url)
    from storage.arrays import digest, encode

    for g, vec in vectors.items():
        assert r.json()["sha256"][g] == digest(encode(np.asarray(vec, np.float32), dtype))
    assert store.verify() == []


def test_overflowing_row_is_refused_and_writes_nothing(api):
    layout = build_layout([("encoder.layer.0.attention.weight", (10, 300))])
    _create(api, layout, dtype="float16", chunk_cols=1024)
    vec = np.ones(3000, np.float32)
    vec[2500] = 1e6  # overflows float16, in the row's last block
    r = api.put(
        "/v1/tasks/big/trajectory/rows/0/groups/layer.0",
        params={"offset": 0},
        content=vec.tobytes(),
        headers={"Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 200, r.text
    r = api.post("/v1/tasks/big/trajectory/rows/0/commit", json={"step": 0})
    assert r.status_code == 422, r.text
    store = TrajectoryStore.open(api.get("/v1/tasks/big/trajectory").json()["url"])
    assert store.num_rows == 0
    assert not store.loc.exists("layer.0", "c")  # no chunk of the refused row was written
