"""The same bases, byte for byte, from the local thread pool, a Dask cluster and Ray.

Stores are chunked finely (64 columns) so each layer splits into many column blocks, an odd
number for one of them: the Gram of a layer is then a real tree of partial sums on every
executor, which is where executors could disagree.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from storage.basis import BasisStore
from storage.errors import StorageError
from storage.trajectory import TrajectoryStore
from tests.conftest import make_trajectory
from worker.svd.bases import multitask_bases, task_basis

pytestmark = pytest.mark.integration

CHUNK = 64  # columns per trajectory chunk and per task block


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    from storage.layout import build_layout

    layout = build_layout(
        [
            ("encoder.layer.0.attention.weight", (40, 30)),
            ("encoder.layer.0.attention.bias", (30,)),  # layer.0: 1230 values, 20 blocks
            ("encoder.layer.1.attention.weight", (20, 20)),
            ("encoder.layer.1.attention.bias", (20,)),  # layer.1: 420 values, 7 blocks
        ]
    )
    root = tmp_path_factory.mktemp("trajectories")
    urls = {}
    for seed, name in enumerate(["sst2", "qnli", "mrpc"]):
        store = TrajectoryStore.create(root / name, layout, model_name="tiny", chunk_cols=CHUNK)
        for i, row in enumerate(make_trajectory(layout, 6, seed=seed)):
            store.append(row, step=i, epoch=i)
        urls[name] = store.url
    return urls


def _compute(kind: str, stores: dict, out: str, executor, progress=None):
    kw = {"executor": executor, "block_cols": CHUNK, "progress": progress}
    if kind == "task":
        return task_basis(stores["sst2"], out, 4, mode="delta", **kw)
    if kind == "global":
        return task_basis(stores["qnli"], out, 5, mode="raw", scope="global", **kw)
    if kind == "multitask":
        return multitask_bases(stores, out, 3, mode="centered", selection="last:2", **kw)
    raise AssertionError(kind)


@pytest.fixture(scope="module")
def local_results(stores, tmp_path_factory):
    from worker.executors import LocalExecutor

    out = {}
    with LocalExecutor(2) as ex:
        for kind in ("task", "global", "multitask"):
            path = str(tmp_path_factory.mktemp(f"local-{kind}") / "basis")
            out[kind] = _compute(kind, stores, path, ex).bases
    return out


def _assert_same(a: BasisStore, b: BasisStore) -> None:
    assert a.layer_names == b.layer_names
    for name in a.layer_names:
        la, lb = a.layer(name), b.layer(name)
        assert la.sha256 == lb.sha256
        assert la.singular_values == lb.singular_values
        assert np.array_equal(a.load(name), b.load(name))


def test_local_bases_are_the_svd_of_the_trajectory(local_results, stores):
    # Identity across executors only matters if the common answer is right: the task basis
    # spans the same vectors as a float64 SVD of the delta rows.
    basis = local_results["task"][0]
    store = TrajectoryStore.open(stores["sst2"])
    for name in basis.layer_names:
        w = store.read_block(name).astype(np.float64)
        _, s, vt = np.linalg.svd(w[1:] - w[0], full_matrices=False)
        v = basis.load(name).astype(np.float64)
        np.testing.assert_allclose(basis.layer(name).singular_values, s[:4], rtol=1e-6)
        ref = vt[:4].T * np.sign(np.sum(v * vt[:4].T, axis=0))
        v_unit = v / np.linalg.norm(v, axis=0)
        assert np.linalg.norm(v_unit - ref, axis=0).max() < 1e-5  # ~ the angle, in radians
        assert np.abs(v.T @ v - np.eye(4)).max() < 1e-6


@pytest.mark.parametrize("kind", ["task", "global", "multitask"])
@pytest.mark.parametrize("name", ["dask", "ray"])
def test_cluster_bases_equal_local_bases(name, kind, stores, local_results, tmp_path, request):
    executor = request.getfixturevalue(f"{name}_executor")
    calls = []
    report = _compute(
        kind, stores, str(tmp_path / "basis"), executor, lambda *call: calls.append(call)
    )
    ref = local_results[kind]
    assert [os.path.basename(b.url) for b in report.bases] == [os.path.basename(b.url) for b in ref]
    for got, want in zip(report.bases, ref, strict=True):
        _assert_same(got, want)
    if kind == "task":
        # 20 + 7 blocks in each pass, reported one by one, then one hash task per layer.
        for phase, total in (("gram", 27), ("project", 27), ("hash", 2)):
            assert [c for c in calls if c[0] == phase] == [
                (phase, i, total) for i in range(1, total + 1)
            ]


def _corrupt_chunk(store_url: str, group: str, row: int, col_chunk: int) -> None:
    path = os.path.join(store_url, group, "c", str(row), str(col_chunk))
    with open(path, "rb") as f:
        data = bytearray(f.read())
    data[8] ^= 0xFF  # a value byte: the chunk's crc32c no longer matches
    with open(path, "wb") as f:
        f.write(bytes(data))


@pytest.mark.parametrize("name", ["local", "dask", "ray"])
def test_failing_task_raises_and_registers_no_basis(name, tmp_path, tiny_layout, request):
    from worker.executors import LocalExecutor

    store = TrajectoryStore.create(tmp_path / "traj", tiny_layout, chunk_cols=CHUNK)
    for i, row in enumerate(make_trajectory(tiny_layout, 5)):
        store.append(row, step=i)
    out = str(tmp_path / "basis")

    def corrupt_after_pass_one(phase, done, total):
        # Pass 1 succeeded; a chunk goes bad before pass 2 reads it again, so the failure
        # happens after the basis' arrays were created and while V is being written.
        if phase == "gram" and done == total:
            _corrupt_chunk(store.url, "layer.0", 3, 5)

    executor = LocalExecutor(2) if name == "local" else request.getfixturevalue(f"{name}_executor")
    try:
        with pytest.raises(StorageError, match="corrupt") as info:
            task_basis(
                store.url,
                out,
                3,
                mode="delta",
                executor=executor,
                block_cols=CHUNK,
                progress=corrupt_after_pass_one,
            )
    finally:
        if name == "local":
            executor.close()
    assert any(
        "project_block failed on ProjectTask(layer.0[320:384])" in n for n in info.value.__notes__
    )
    assert not BasisStore.exists(out)
    with pytest.raises(KeyError):
        BasisStore.open(out)
