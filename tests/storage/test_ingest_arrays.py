"""Ingesting numpy arrays (in memory, .npy, .npz) into trajectory stores."""

from __future__ import annotations

import numpy as np
import pytest

from storage.errors import Conflict, InvalidInput, LayoutMismatch, NotFound
from storage.ingest import StoreOptions, flat_layout, ingest_arrays, load_arrays
from storage.trajectory import TrajectoryStore
from tests.conftest import make_trajectory
from tests.storage.conformance import TrajectoryStoreSuite

snapshot = TrajectoryStoreSuite.snapshot


@pytest.fixture
def stacked(tiny_layout):
    rows = make_trajectory(tiny_layout, 5, seed=3)
    return {g: np.stack([r[g] for r in rows]) for g in tiny_layout.group_names}  # (t, D)


def assert_store_holds(url, arrays):
    store = TrajectoryStore.open(url)
    assert store.num_rows == len(next(iter(arrays.values())))
    for g, a in arrays.items():
        np.testing.assert_array_equal(store.read_block(g), a)
    return store


def test_in_memory_arrays_with_a_model_layout(tmp_path, tiny_layout, stacked):
    url = tmp_path / "traj"
    report = ingest_arrays(url, stacked, layout=tiny_layout, steps=[0, 5, 10, 15, 20])
    assert (report.rows, report.written) == (5, 5)
    store = assert_store_holds(url, stacked)
    assert store.layout.hash == tiny_layout.hash
    assert [r.step for r in store.rows] == [0, 5, 10, 15, 20]


def test_without_a_layout_each_array_is_a_group(tmp_path, stacked):
    ingest_arrays(tmp_path / "traj", stacked)
    store = assert_store_holds(tmp_path / "traj", stacked)
    assert store.layout == flat_layout({"layer.0": 1230, "layer.1": 420})
    assert store.layout.rule == "arrays"


def test_npz_file_with_steps_and_epochs(tmp_path, stacked):
    path = tmp_path / "traj.npz"
    np.savez(path, **stacked, step=np.arange(5) * 7, epoch=np.arange(5) / 2)
    ingest_arrays(tmp_path / "traj", path, options=StoreOptions(dtype="float16"))
    store = TrajectoryStore.open(tmp_path / "traj")
    assert [r.step for r in store.rows] == [0, 7, 14, 21, 28]
    assert [r.epoch for r in store.rows] == [0.0, 0.5, 1.0, 1.5, 2.0]
    for g, a in stacked.items():
        np.testing.assert_array_equal(store.read_block(g), a.astype(np.float16).astype(np.float32))


def test_folder_of_npy_files_is_memory_mapped(tmp_path, stacked):
    folder = tmp_path / "arrays"
    folder.mkdir()
    for g, a in stacked.items():
        np.save(folder / f"{g}.npy", a)
    arrays, steps, epochs = load_arrays(folder)
    assert steps is None and epochs is None
    assert all(isinstance(a, np.memmap) for a in arrays.values())
    ingest_arrays(tmp_path / "traj", folder)
    assert_store_holds(tmp_path / "traj", stacked)


def test_single_npy_file_is_one_group(tmp_path, stacked):
    np.save(tmp_path / "encoder.npy", stacked["layer.0"])
    ingest_arrays(tmp_path / "traj", tmp_path / "encoder.npy")
    store = assert_store_holds(tmp_path / "traj", {"encoder": stacked["layer.0"]})
    assert store.layout.group_names == ["encoder"]


def test_resume_appends_only_new_rows_and_checks_the_old(tmp_path, tiny_layout, stacked):
    url = tmp_path / "traj"
    ingest_arrays(url, {g: a[:2] for g, a in stacked.items()}, layout=tiny_layout)
    report = ingest_arrays(url, stacked)  # the store's own layout is used
    assert (report.written, report.verified, report.rows) == (3, 2, 5)
    assert_store_holds(url, stacked)
    changed = {g: a.copy() for g, a in stacked.items()}
    changed["layer.1"][1, 0] += 1.0
    before = snapshot(str(url))
    with pytest.raises(Conflict, match=r"arrays\[1\]: differs from row 1"):
        ingest_arrays(url, changed)
    assert snapshot(str(url)) == before


def test_bad_arrays_write_nothing(tmp_path, tiny_layout, stacked):
    url = tmp_path / "traj"
    bad = {g: a.copy() for g, a in stacked.items()}
    bad["layer.0"][3, 17] = np.inf
    with pytest.raises(InvalidInput, match=r"arrays\[3\].*NaN or Inf"):
        ingest_arrays(url, bad, layout=tiny_layout)
    assert not url.exists()
    with pytest.raises(LayoutMismatch, match="do not match the layout"):
        ingest_arrays(url, {"layer.0": stacked["layer.0"]}, layout=tiny_layout)
    with pytest.raises(InvalidInput, match="different numbers of rows"):
        ingest_arrays(url, {"layer.0": stacked["layer.0"], "layer.1": stacked["layer.1"][:3]})
    with pytest.raises(InvalidInput, match=r"\(rows, D\)"):
        ingest_arrays(url, {"layer.0": stacked["layer.0"][0]})
    with pytest.raises(InvalidInput, match="4 step values for 5 rows"):
        ingest_arrays(url, stacked, steps=[1, 2, 3, 4])
    with pytest.raises(InvalidInput, match="overflow"):
        ingest_arrays(url, {"g": np.full((2, 3), 1e6)}, options=StoreOptions(dtype="float16"))
    with pytest.raises(NotFound):
        ingest_arrays(url, tmp_path / "missing.npz")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(InvalidInput, match="not a .npy or .npz"):
        ingest_arrays(url, tmp_path / "x.txt")
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(InvalidInput, match="not a readable .npz"):
        ingest_arrays(url, tmp_path / "broken.npz")
    assert not url.exists()
