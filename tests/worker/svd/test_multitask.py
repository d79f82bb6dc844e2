"""Unified, zero-shot and global bases against direct SVDs of the rows and columns they span."""

from __future__ import annotations

import threading
from collections import Counter

import numpy as np
import pytest

from storage.basis import BasisStore
from storage.errors import Conflict, InvalidInput, LayoutMismatch
from storage.layout import build_layout
from storage.trajectory import TrajectoryStore
from tests.worker.svd.spectra import orth_error, reference_svd, vector_angles
from worker.svd.bases import multitask_bases, task_basis
from worker.svd.engine import BasisRequest, compute_bases, make_sources
from worker.svd.method import RandomizedMethod

TASKS = ("sst2", "mrpc", "qnli")
SIZES = {"layer.0": 300, "layer.1": 170}  # neither a multiple of the 64-column chunks
T = 6  # theta0 and five checkpoints per task
LAST = 3  # "last:3": three checkpoints of each task enter the bases


def layout():
    return build_layout([(f"encoder.layer.{i}.w", (d,)) for i, d in enumerate(SIZES.values())])


@pytest.fixture
def stores(tmp_path):
    """Three tasks fine-tuned from one theta0, each moving in its own directions."""
    rng = np.random.default_rng(0)
    theta0 = {g: rng.standard_normal(d) for g, d in SIZES.items()}
    urls = {}
    for j, task in enumerate(TASKS):
        store = TrajectoryStore.create(tmp_path / task, layout(), chunk_cols=64, capacity=T)
        dirs = {g: rng.standard_normal((3, d)) * [1.0, 0.3, 0.05][j] for g, d in SIZES.items()}
        for i in range(T):
            coef = rng.standard_normal(3) * 0.1 * i
            store.append({g: (theta0[g] + coef @ dirs[g]).astype(np.float32) for g in SIZES})
        urls[task] = store.url
    return urls


def rows_of(url: str, group: str, mode: str) -> np.ndarray:
    """The float64 rows a task contributes in a mode (before centring)."""
    w = TrajectoryStore.open(url).read_block(group).astype(np.float64)
    sel = w[T - LAST :]
    return sel if mode == "raw" else sel - w[0]


def direct_basis(urls, group: str, mode: str):
    x = np.vstack([rows_of(u, group, mode) for u in urls])
    if mode == "centered":
        x = x - x.mean(axis=0)
    return reference_svd(x)


def assert_basis_equals(basis: BasisStore, group: str, v_ref, s_ref, bound=1e-5):
    v = basis.load(group)
    k = v.shape[1]
    assert vector_angles(v, v_ref[:, :k]).max() <= bound
    assert np.linalg.norm(v - v_ref[:, :k], axis=0).max() <= bound
    assert orth_error(v) <= 1e-6
    np.testing.assert_allclose(basis.layer(group).singular_values, s_ref[:k], rtol=1e-7)


@pytest.mark.parametrize("mode", ["delta", "centered", "raw"])
def test_unified_and_zeroshot_equal_direct_svds_of_their_rows(stores, tmp_path, mode):
    k = 5
    report = multitask_bases(stores, str(tmp_path / "out"), k, mode=mode, selection=f"last:{LAST}")
    by_name = {b.url.rstrip("/").rsplit("/", 1)[-1]: b for b in report.bases}
    assert set(by_name) == {"unified"} | {f"zeroshot-{t}" for t in TASKS}
    assert report.rows == LAST * len(TASKS)
    for group in SIZES:
        v_ref, s_ref = direct_basis(stores.values(), group, mode)
        assert_basis_equals(by_name["unified"], group, v_ref, s_ref)
        for held_out in TASKS:
            others = [u for t, u in stores.items() if t != held_out]
            # Centred zero-shot bases are centred on their own rows, not on the unified mean.
            v_ref, s_ref = direct_basis(others, group, mode)
            basis = by_name[f"zeroshot-{held_out}"]
            assert_basis_equals(basis, group, v_ref, s_ref)
            assert basis.manifest["held_out"] == held_out
            assert basis.manifest["kind"] == "zeroshot"


def test_randomized_multitask_bases_match_the_exact_ones(stores, tmp_path):
    kw = dict(mode="centered", selection=f"last:{LAST}")
    exact = multitask_bases(stores, str(tmp_path / "exact"), 4, **kw)
    rand = multitask_bases(
        stores, str(tmp_path / "rand"), 4, method=RandomizedMethod(power_iters=1), **kw
    )
    for e, r in zip(exact.bases, rand.bases, strict=True):
        assert r.manifest["method"] == "randomized" and r.manifest["kind"] == e.manifest["kind"]
        for group in SIZES:
            # l = k + 10 covers all 9 (or 6) rows: the sketch spans them, so this is exact.
            assert vector_angles(r.load(group), e.load(group)).max() <= 1e-6
            np.testing.assert_allclose(
                r.layer(group).singular_values, e.layer(group).singular_values, rtol=1e-9
            )
            np.testing.assert_allclose(r.layer(group).energy, e.layer(group).energy, rtol=1e-9)


@pytest.mark.parametrize("method", ["gram", "randomized"])
@pytest.mark.parametrize("mode", ["delta", "raw"])
def test_global_basis_is_the_svd_of_the_concatenated_layers(stores, tmp_path, method, mode):
    url = stores["sst2"]  # its moves span 3 directions per layer
    select = list(range(T)) if mode == "raw" else None
    report = task_basis(
        url, str(tmp_path / "global"), 3, mode=mode, scope="global", selection=select, method=method
    )
    basis = report.bases[0]
    assert basis.manifest["scope"] == "global" and basis.manifest["kind"] == "global"
    w = np.hstack([TrajectoryStore.open(url).read_block(g) for g in SIZES]).astype(np.float64)
    x = w if mode == "raw" else w[1:] - w[0]
    v_ref, s_ref = reference_svd(x)
    # Each layer file holds its slice of the global V, in layout order.
    v = np.vstack([basis.load(g) for g in SIZES])
    bound = 1e-5 if method == "gram" else 1e-4
    assert vector_angles(v, v_ref[:, :3]).max() <= bound
    assert orth_error(v) <= 1e-6
    for g in SIZES:
        np.testing.assert_allclose(basis.layer(g).singular_values, s_ref[:3], rtol=1e-7)
        # A layer's slice alone is not orthonormal: the subspace is the whole encoder's.
        assert orth_error(basis.load(g)) > 1e-3


def test_unified_global_basis_spans_rows_and_layers(stores, tmp_path):
    report = multitask_bases(
        stores, str(tmp_path / "out"), 4, selection=f"last:{LAST}", zeroshot=False, scope="global"
    )
    (unified,) = report.bases
    x = np.hstack([np.vstack([rows_of(u, g, "delta") for u in stores.values()]) for g in SIZES])
    v_ref, s_ref = reference_svd(x)
    v = np.vstack([unified.load(g) for g in SIZES])
    assert vector_angles(v, v_ref[:, :4]).max() <= 1e-5
    np.testing.assert_allclose(unified.layer("layer.0").singular_values, s_ref[:4], rtol=1e-7)


def count_reads(monkeypatch) -> Counter:
    """A counting spy on TrajectoryStore.read_block: (url, group, start, stop) -> calls."""
    calls: Counter = Counter()
    lock = threading.Lock()
    original = TrajectoryStore.read_block

    def spy(self, group, start=0, stop=None, rows=None):
        with lock:
            calls[(self.url, group, start, stop)] += 1
        return original(self, group, start, stop, rows)

    monkeypatch.setattr(TrajectoryStore, "read_block", spy)
    return calls


def all_blocks(urls) -> set:
    store = TrajectoryStore.open(next(iter(urls)))
    return {(u, g, a, b) for u in urls for g in SIZES for a, b in store.column_ranges(g, 128)}


def test_multitask_bases_read_the_data_exactly_twice(stores, tmp_path, monkeypatch):
    calls = count_reads(monkeypatch)
    report = multitask_bases(
        stores, str(tmp_path / "out"), 3, selection=f"last:{LAST}", block_cols=128
    )
    assert len(report.bases) == 1 + len(TASKS)  # N + 1 bases ...
    assert set(calls) == all_blocks(stores.values())
    assert set(calls.values()) == {2}  # ... from two passes over every block, not 2(N + 1)


def test_randomized_multitask_bases_share_their_passes(stores, tmp_path, monkeypatch):
    calls = count_reads(monkeypatch)
    multitask_bases(
        stores,
        str(tmp_path / "out"),
        3,
        selection=f"last:{LAST}",
        block_cols=128,
        method=RandomizedMethod(power_iters=1),
    )
    assert set(calls) == all_blocks(stores.values())
    assert set(calls.values()) == {4}  # sketch, one power step, Rayleigh-Ritz, projection


def test_bad_requests_fail_before_anything_is_written(stores, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(InvalidInput, match="zero-shot task 'cola' is not among"):
        multitask_bases(stores, str(out), 2, zeroshot=["cola"])
    with pytest.raises(InvalidInput, match="at least two tasks"):
        multitask_bases({"sst2": stores["sst2"]}, str(out), 2)
    with pytest.raises(InvalidInput, match="spans 3 rows but rank 4"):
        multitask_bases(stores, str(out), 4)  # "last": one row per task
    assert not out.exists()
    other = TrajectoryStore.create(
        tmp_path / "other", build_layout([("encoder.layer.0.w", (10,))]), capacity=2
    )
    with pytest.raises(LayoutMismatch):
        multitask_bases({"a": stores["sst2"], "b": other.url}, str(out), 1)
    sources = make_sources([TrajectoryStore.open(stores["sst2"])], [None], "delta")
    same = str(tmp_path / "same")
    with pytest.raises(InvalidInput, match="two bases would be written"):
        compute_bases(sources, [BasisRequest(same, 2), BasisRequest(same, 3)])
    first = task_basis(stores["sst2"], str(tmp_path / "b"), 2).bases[0]
    with pytest.raises(Conflict, match="overwrite=True"):
        task_basis(stores["sst2"], str(tmp_path / "b"), 3)
    assert BasisStore.open(first.url).layer("layer.0").rank == 2  # untouched
    assert task_basis(stores["sst2"], str(tmp_path / "b"), 3, overwrite=True).bases[0]
