"""Long-lived handles never read the wrong bytes: workers cache trajectory handles across jobs,
so a store that grows, is deleted, or is created again at the same URL must be seen as such
(before these fixes: zeros from a deleted store, another store's rows through an old handle,
and zarr's bare KeyError instead of NotFound)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from storage.basis import BasisStore
from storage.errors import Conflict, NotFound
from storage.trajectory import TrajectoryStore
from tests.conftest import make_trajectory
from worker.executors import LocalExecutor
from worker.svd.engine import BasisRequest, compute_bases
from worker.svd.sources import make_sources
from worker.svd.tasks import BlockTask, read_block


def _store(url, layout, rows, seed, capacity=128, chunk_cols=256):
    store = TrajectoryStore.create(url, layout, chunk_cols=chunk_cols, capacity=capacity)
    data = make_trajectory(layout, rows, seed=seed)
    for row in data:
        store.append(row)
    return store, data


def _block(url, rows, group="layer.0", cols=128):
    store = TrajectoryStore.open(url)
    (src,) = make_sources([store], [list(rows)], "raw")
    return BlockTask((src,), group, 0, cols)


def test_store_recreated_at_the_same_url_is_read_afresh(tmp_path, tiny_layout):
    url = tmp_path / "traj"
    _store(url, tiny_layout, 8, seed=1)
    x_old, _, _ = read_block(_block(url, range(8)))  # caches a handle of the first store
    shutil.rmtree(url)
    # Same URL, other rows, fewer of them, another chunk grid.
    _, data = _store(url, tiny_layout, 5, seed=2, chunk_cols=128)
    x_new, _, _ = read_block(_block(url, range(5)))
    want = np.stack([r["layer.0"][:128] for r in data])
    np.testing.assert_array_equal(x_new, want)
    assert not np.array_equal(x_new, x_old[:5])


def test_a_job_planned_before_the_store_was_replaced_refuses_to_read(tmp_path, tiny_layout):
    url = tmp_path / "traj"
    _store(url, tiny_layout, 6, seed=1)
    planned = _block(url, range(6))
    read_block(planned)
    shutil.rmtree(url)
    _store(url, tiny_layout, 8, seed=3)
    # The cached handle is of the old store, the plan too: reading would mix two stores.
    with pytest.raises(Conflict, match="replaced"):
        for row in range(6, 8):  # rows the old handle does not know force a refresh
            read_block(
                BlockTask(
                    (
                        planned.sources[0].__class__(
                            **{**planned.sources[0].__dict__, "rows": (row,)}
                        ),
                    ),  # fmt: skip
                    "layer.0",
                    0,
                    128,
                )
            )


def test_a_cached_handle_follows_growth_past_capacity(tmp_path, tiny_layout):
    url = tmp_path / "traj"
    store, data = _store(url, tiny_layout, 2, seed=4, capacity=2)
    read_block(_block(url, range(2)))
    more = make_trajectory(tiny_layout, 7, seed=5)[2:]
    for row in more:  # the arrays grow from 2 to 8 rows under the cached handle
        store.append(row)
    x, _, _ = read_block(_block(url, range(7)))
    want = np.stack([r["layer.0"][:128] for r in data + more])
    np.testing.assert_array_equal(x, want)


def test_stale_array_shape_is_reopened_not_an_index_error(tmp_path, tiny_layout):
    url = tmp_path / "traj"
    writer, data = _store(url, tiny_layout, 2, seed=6, capacity=2)
    reader = TrajectoryStore.open(url)
    reader.read_block("layer.1")  # opens the arrays at capacity 2
    more = make_trajectory(tiny_layout, 5, seed=7)[2:]
    for row in more:
        writer.append(row)
    # Another thread refreshed the rows while this one holds the old array (the race in a
    # shared worker handle): the rows are committed, the array object is too small.
    reader._rows = reader._scan_rows()
    got = reader.read_block("layer.1")
    np.testing.assert_array_equal(got, np.stack([r["layer.1"] for r in data + more]))


def test_deleted_trajectory_is_not_found_never_zeros(tmp_path, tiny_layout):
    url = tmp_path / "traj"
    _store(url, tiny_layout, 4, seed=8)
    handle = TrajectoryStore.open(url)
    assert handle.read_block("layer.0", rows=[1]).any()
    shutil.rmtree(url)
    with pytest.raises(NotFound, match="deleted"):
        handle.read_block("layer.0", rows=[1])  # the array is still open: zarr gives zeros
    with pytest.raises(NotFound):
        handle.read_block("layer.1", rows=[1])  # not open yet
    with pytest.raises(NotFound):
        handle.refresh()


def test_deleted_group_array_is_not_found_not_a_bare_key_error(tmp_path, tiny_layout):
    url = tmp_path / "traj"
    _store(url, tiny_layout, 3, seed=9)
    shutil.rmtree(url / "layer.1")
    handle = TrajectoryStore.open(url)
    with pytest.raises(NotFound, match="layer.1"):
        handle.read_block("layer.1")


def test_deleted_basis_is_not_found_never_zeros(tmp_path, tiny_layout):
    url = tmp_path / "traj"
    store, _ = _store(url, tiny_layout, 6, seed=10)
    sources = make_sources([store], ["all"], "delta")
    out = str(tmp_path / "basis")
    compute_bases(sources, [BasisRequest(out, 3)], executor=LocalExecutor(1), block_cols=256)
    basis = BasisStore.open(out)
    first = b"".join(basis.iter_bytes("layer.0"))
    assert len(first) == basis.layer("layer.0").nbytes
    shutil.rmtree(out)
    with pytest.raises(NotFound):
        b"".join(basis.iter_bytes("layer.0"))
    with pytest.raises(NotFound):
        basis.load("layer.1")
