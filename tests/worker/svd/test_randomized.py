"""Randomized SVD (Halko, Martinsson, Tropp 2011) against the exact Gram route."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from storage.basis import BasisStore
from storage.errors import InvalidInput
from tests.worker.svd.spectra import (
    one_group_store,
    orth_error,
    orthonormal,
    subspace_angles,
    vector_angles,
)
from worker.executors import LocalExecutor
from worker.svd.bases import task_basis
from worker.svd.gram import svd_basis
from worker.svd.method import RandomizedMethod, method_from_name
from worker.svd.randomized import SketchParams, randomized_basis
from worker.svd.sketch import (
    OMEGA_UNIT,
    PowerPart,
    PowerTask,
    SketchTask,
    gaussian_rows,
    power_block,
    sketch_block,
)
from worker.svd.tasks import BlockTask, SourceRows


def decaying_trajectory(t: int, d: int, rate: float, seed: int = 0) -> np.ndarray:
    """theta0 then theta0 + X, X (t-1, d) with singular values rate^i (a long run of steps)."""
    rng = np.random.default_rng(seed)
    r = min(t - 1, d)
    x = (orthonormal(rng, t - 1, r) * rate ** np.arange(r)) @ orthonormal(rng, d, r).T
    theta0 = rng.standard_normal(d)
    return np.vstack([theta0, theta0 + x]).astype(np.float32)


@pytest.fixture(scope="module")
def long_run():
    return decaying_trajectory(1000, 200, 0.8)


# t = 1000 checkpoints; raw mode at t = 300 (its exact route adds an n^3 SVD on the small side,
# seconds at n = 1000 on a busy CI core, and the sketch is the same code).
@pytest.mark.parametrize(("mode", "t"), [("delta", 1000), ("centered", 1000), ("raw", 300)])
def test_randomized_matches_the_exact_route_on_a_decaying_spectrum(long_run, mode, t):
    k, p, q = 10, 10, 2
    w = long_run[:t]
    exact = svd_basis(w, k, mode=mode, chunk_cols=128)
    rand = randomized_basis(w, k, mode=mode, oversample=p, power_iters=q, seed=7, chunk_cols=128)
    assert rand.rank == k
    # HMT: the error decays like (sigma_{l+1}/sigma_k)^(2q+1) = 0.8^55 ~ 5e-6 here; measured
    # 8e-7 rad, and singular values within 5e-11.
    assert subspace_angles(rand.v, exact.v).max() <= 1e-5
    assert vector_angles(rand.v, exact.v).max() <= 1e-5
    assert np.linalg.norm(rand.v - exact.v, axis=0).max() <= 1e-5  # same signs
    np.testing.assert_allclose(rand.singular_values, exact.singular_values, rtol=1e-8)
    np.testing.assert_allclose(rand.energy, exact.energy, rtol=1e-6)
    assert orth_error(rand.v) <= 1e-6


def test_power_iterations_reduce_the_error_on_a_slow_spectrum():
    w = decaying_trajectory(400, 150, 0.95, seed=1)
    exact = svd_basis(w, 10, mode="delta")
    errors = [
        subspace_angles(randomized_basis(w, 10, mode="delta", power_iters=q).v, exact.v).max()
        for q in (0, 1, 2, 3)
    ]
    # Measured 1.4, 0.71, 0.17, 0.04 rad: each iteration raises the gap ratio's power by 2.
    assert all(a > b for a, b in zip(errors, errors[1:], strict=False)), errors
    assert errors[-1] < 0.1
    sv_errors = [
        np.abs(
            randomized_basis(w, 10, mode="delta", oversample=p).singular_values
            / exact.singular_values
            - 1
        ).max()
        for p in (0, 5, 20)
    ]
    assert sv_errors[0] > sv_errors[1] > sv_errors[2], sv_errors


def test_seed_fixes_the_bytes_and_other_seeds_agree_within_the_error(long_run):
    a = randomized_basis(long_run, 8, mode="delta", seed=3, chunk_cols=64)
    b = randomized_basis(long_run.copy(), 8, mode="delta", seed=3, chunk_cols=64)
    c = randomized_basis(long_run, 8, mode="delta", seed=4, chunk_cols=64)
    assert a.v.tobytes() == b.v.tobytes()
    assert a.v.tobytes() != c.v.tobytes()
    assert subspace_angles(a.v, c.v).max() <= 1e-5


def test_omega_does_not_depend_on_block_boundaries_or_width():
    whole = gaussian_rows(5, "layer.3", 0, OMEGA_UNIT + 300, 6)
    parts = np.vstack(
        [
            gaussian_rows(5, "layer.3", a, b, 6)
            for a, b in [(0, 37), (37, OMEGA_UNIT - 1), (OMEGA_UNIT - 1, OMEGA_UNIT + 300)]
        ]
    )
    np.testing.assert_array_equal(whole, parts)
    np.testing.assert_array_equal(gaussian_rows(5, "layer.3", 10, 90, 3), whole[10:90, :3])
    # Each group gets its own test matrix, or a global basis would sketch W_0 + W_1.
    assert not np.array_equal(gaussian_rows(5, "layer.4", 0, 50, 2), whole[:50, :2])
    assert abs(whole.mean()) < 0.01 and abs(whole.std() - 1) < 0.01


def test_store_route_gives_the_in_memory_bytes_and_records_the_method(tmp_path):
    w = decaying_trajectory(80, 300, 0.8, seed=2)
    store = one_group_store(tmp_path / "traj", w, 128)
    for mode in ("delta", "centered", "raw"):
        select = list(range(80)) if mode == "raw" else None
        report = task_basis(
            store.url,
            str(tmp_path / f"basis-{mode}"),
            6,
            mode=mode,
            selection=select,
            block_cols=128,
            method=RandomizedMethod(oversample=5, power_iters=1, seed=11),
        )
        stored = BasisStore.open(report.bases[0].url)
        mem = randomized_basis(
            w, 6, mode=mode, oversample=5, power_iters=1, seed=11, chunk_cols=128, group="layer.0"
        )
        np.testing.assert_array_equal(stored.load("layer.0"), mem.v)
        assert stored.layer("layer.0").singular_values == mem.singular_values.tolist()
        assert stored.manifest["method"] == "randomized"
        assert stored.manifest["method_params"] == {"oversample": 5, "power_iters": 1, "seed": 11}
        # sketch + 1 power + Rayleigh-Ritz + projection = 4 passes over 80 rows
        assert report.bytes_read == 4 * 4 * 80 * 300
        exact = svd_basis(w, 6, mode=mode)
        # (sigma_{l+1}/sigma_k)^(2q+1) with l = k + 5, q = 1: 0.8^18 = 0.018 (measured 4e-3).
        assert subspace_angles(mem.v, exact.v).max() <= 0.8 ** (6 * 3)
    gram = BasisStore.open(task_basis(store.url, str(tmp_path / "gram"), 6).bases[0].url)
    assert gram.manifest["method"] == "gram" and gram.manifest["method_params"] == {}


def test_bad_parameters_are_refused_before_anything_is_written(tmp_path):
    w = decaying_trajectory(20, 64, 0.8)
    with pytest.raises(InvalidInput, match="oversample must be a non-negative integer"):
        randomized_basis(w, 4, oversample=-1)
    with pytest.raises(InvalidInput, match="power_iters"):
        SketchParams(power_iters=1.5)
    with pytest.raises(InvalidInput, match="trajectory has 19 rows but rank 20 was asked for"):
        randomized_basis(w, 20, mode="delta")
    store = one_group_store(tmp_path / "traj", w, 64)
    out = tmp_path / "basis"
    with pytest.raises(InvalidInput, match="seed must be a non-negative integer"):
        RandomizedMethod(seed=-2)  # refused when the method is chosen, before any work
    with pytest.raises(InvalidInput, match="seed must be a non-negative integer"):
        method_from_name("randomized", seed=-2)
    with pytest.raises(InvalidInput, match="does not take the parameters"):
        method_from_name("gram", seed=2)
    for method in ("lanczos", object()):
        with pytest.raises(InvalidInput, match="method"):
            task_basis(store.url, str(out), 4, method=method)
    assert not out.exists()


def test_rank_deficient_long_runs_drop_noise_instead_of_dividing_by_it():
    rng = np.random.default_rng(4)
    theta0 = rng.standard_normal(120)
    moves = rng.standard_normal((3, 120))
    # 400 checkpoints inside a 3-dimensional subspace: the sketch has 12 columns, 9 are noise.
    w = (theta0 + rng.standard_normal((400, 3)) @ moves).astype(np.float32)
    w[0] = theta0
    b = randomized_basis(w, 8, mode="delta", oversample=4)
    assert b.rank == 3
    assert np.all(np.isfinite(b.v)) and orth_error(b.v) <= 1e-6
    assert subspace_angles(b.v, svd_basis(w, 3, mode="delta").v).max() <= 1e-6


def test_chunk_tasks_pickle_and_parts_add_up(tmp_path):
    """What Dask and Ray ship: tasks and results survive pickling; block parts sum to the whole."""
    w = decaying_trajectory(30, 200, 0.8)
    store = one_group_store(tmp_path / "traj", w, 64)
    src = SourceRows(store.url, tuple(range(1, 30)), 0)
    e = np.zeros((29, 0))
    blocks = [BlockTask((src,), "layer.0", a, min(a + 64, 200)) for a in range(0, 200, 64)]
    whole = BlockTask((src,), "layer.0", 0, 200)
    for fn, make in (
        (sketch_block, lambda b: SketchTask(b, 1, 5, e)),
        (power_block, lambda b: PowerTask(b, np.eye(29)[:, :4], True)),
    ):
        tasks = [pickle.loads(pickle.dumps(make(b))) for b in blocks]
        parts = LocalExecutor(2).map_reduce(fn, tasks, key=lambda tk: tk.block.group)
        ref = fn(make(whole))
        total = pickle.loads(pickle.dumps(parts["layer.0"]))
        for name in ("z", "c") if isinstance(ref, PowerPart) else ("y", "sq_norms", "gram_e"):
            np.testing.assert_allclose(getattr(total, name), getattr(ref, name), rtol=1e-12)
