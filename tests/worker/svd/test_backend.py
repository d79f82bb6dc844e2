"""Devices for the dense products: choice, agreement between them, and reproducibility."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from storage.basis import BasisStore
from storage.errors import InvalidInput
from worker.svd import backend
from worker.svd.backend import (
    SUB_BLOCK,
    Products,
    gram_torch,
    project_torch,
    resolve_device,
    single_thread,
)
from worker.svd.bases import task_basis
from worker.svd.gram import svd_basis

HAS_CUDA = torch.cuda.is_available()


def _trajectory(t: int = 9, d: int = 3 * SUB_BLOCK + 123, seed: int = 0) -> np.ndarray:
    """(t, d) float32 rows: a dominant theta0 plus small steps, as in raw mode."""
    rng = np.random.default_rng(seed)
    theta0 = rng.standard_normal(d)
    steps = 1e-3 * np.cumsum(rng.standard_normal((t, d)) * np.logspace(0, -2, t)[:, None], 0)
    return (theta0 + steps).astype(np.float32)


def _gram_exact(x: np.ndarray) -> np.ndarray:
    """Reference Gram in extended precision: products of float32 values are exact in float64,
    so only the sums round, and they round in 64-bit-mantissa long double here."""
    xl = x.astype(np.longdouble)
    return np.asarray(xl @ xl.T, dtype=np.float64)


# ----------------------------------------------------------------------------- resolve_device
def test_device_env_forces_cpu_and_argument_wins(monkeypatch):
    monkeypatch.setenv("TINYSUB_DEVICE", "cpu")
    assert resolve_device() == "cpu"
    monkeypatch.setenv("TINYSUB_DEVICE", "numpy")
    assert resolve_device() == "numpy"
    assert resolve_device("cpu") == "cpu"  # an explicit device beats the environment
    monkeypatch.delenv("TINYSUB_DEVICE")
    assert resolve_device() == ("cuda" if HAS_CUDA else "cpu")


def test_unknown_device_is_invalid_input():
    with pytest.raises(InvalidInput, match="'tpu' is not one of"):
        resolve_device("tpu")


@pytest.mark.skipif(HAS_CUDA, reason="this host has a GPU")
def test_asking_for_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(InvalidInput, match="CUDA is not available"):
        resolve_device("cuda")


# ------------------------------------------------------------------------------ agreement
@pytest.mark.parametrize("delta", [False, True])
def test_numpy_and_torch_grams_agree_to_1e12(delta):
    w = _trajectory()
    refs = [(slice(1, w.shape[0]), w[0])] if delta else None
    x = w.astype(np.float64)
    if delta:
        x[1:] -= x[0]
    exact = _gram_exact(x)
    g_np = Products("numpy").gram(w, refs)
    g_torch = gram_torch(w, refs, "cpu")  # the GPU code path, run on the CPU
    scale = np.abs(exact).max()
    assert np.abs(g_np - exact).max() <= 1e-12 * scale
    assert np.abs(g_torch - exact).max() <= 1e-12 * scale
    assert np.abs(g_np - g_torch).max() <= 1e-12 * scale
    # The 'cpu' device computes its Gram with torch on one intra-op thread (deterministic).
    with single_thread():
        g_one = gram_torch(w, refs, "cpu")
    assert np.array_equal(Products("cpu").gram(w, refs), g_one)


@pytest.mark.parametrize("step", [7, 1 << 18])  # ragged steps, and the GPU's one-step blocks
def test_the_gpu_step_gives_the_same_products(monkeypatch, step):
    """The GPU path takes 2^18 columns per step (not 8,192); run it on the CPU with other steps:
    the same products to float64 rounding, refs and the raw-mode row included."""
    assert backend.sub_block("cuda") == backend.GPU_SUB_BLOCK
    assert backend.sub_block("cpu") == backend.sub_block("numpy") == backend.SUB_BLOCK
    w = _trajectory()
    refs = [(slice(1, w.shape[0]), w[0])]
    append = w[2].copy()
    m = np.random.default_rng(3).standard_normal((w.shape[0] + 1, 4))
    g_ref = gram_torch(w, refs, "cpu", append)
    v_ref = project_torch(w, m, refs, "cpu", append)
    monkeypatch.setattr(backend, "sub_block", lambda device: step)
    g = gram_torch(w, refs, "cpu", append)
    v = project_torch(w, m, refs, "cpu", append)
    assert np.abs(g - g_ref).max() <= 1e-12 * np.abs(g_ref).max()
    np.testing.assert_allclose(v, v_ref, rtol=2**-22, atol=1e-12 * np.abs(v_ref).max())


def test_numpy_and_torch_projections_agree():
    w = _trajectory()
    m = np.random.default_rng(1).standard_normal((w.shape[0], 4))
    exact = (w.astype(np.float64).T @ m).astype(np.float32)
    for device in ("numpy", "cpu"):
        v = Products(device).project(w, m)
        assert v.dtype == np.float32 and v.shape == (w.shape[1], 4)
        # Both compute in float64 and round once to float32: at most one float32 ulp apart
        # (plus float64 rounding, visible only on entries that cancel to near zero).
        np.testing.assert_allclose(v, exact, rtol=2**-23, atol=1e-12 * np.abs(exact).max())


def test_numpy_and_torch_bases_agree():
    w = _trajectory()
    a = svd_basis(w, 5, mode="delta", device="numpy")
    b = svd_basis(w, 5, mode="delta", device="cpu")
    np.testing.assert_allclose(a.singular_values, b.singular_values, rtol=1e-12)
    # Same Gram, projections one float32 ulp apart (entries are ~ 1/sqrt(D) ~ 0.006).
    np.testing.assert_allclose(a.v, b.v, rtol=0, atol=1e-8)


def test_executor_tasks_use_the_requested_device(tiny_store, tmp_path):
    np_basis = task_basis(tiny_store.url, str(tmp_path / "np"), 4, device="numpy").bases[0]
    cpu_basis = task_basis(tiny_store.url, str(tmp_path / "cpu"), 4, device="cpu").bases[0]
    for g in tiny_store.layout.group_names:
        ref = svd_basis(tiny_store.read_block(g), 4, mode="delta", device="numpy")
        assert np.array_equal(BasisStore.open(np_basis.url).load(g), ref.v)
        np.testing.assert_allclose(cpu_basis.load(g), ref.v, rtol=0, atol=1e-7)


# ------------------------------------------------------------------------ reproducibility
def test_cpu_products_do_not_depend_on_the_thread_count():
    # MKL splits a skinny Gram's inner dimension across threads (different bits per thread
    # count); the CPU products pin one intra-op thread per call, whatever the caller set.
    w = _trajectory(t=33, d=8 * SUB_BLOCK + 5)
    m = np.random.default_rng(2).standard_normal((33, 7))
    p = Products("cpu")
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append((p.gram(w), p.project(w, m)))
    finally:
        torch.set_num_threads(before)
    with ThreadPoolExecutor(3) as pool:  # as on the local executor: concurrent tasks
        concurrent = list(pool.map(lambda _: (p.gram(w), p.project(w, m)), range(3)))
    for g, v in results[1:] + concurrent:
        assert np.array_equal(g, results[0][0])
        assert np.array_equal(v, results[0][1])
    # ...and the same bits as torch run on one thread on purpose.
    torch.set_num_threads(1)
    try:
        assert np.array_equal(gram_torch(w, None, "cpu"), results[0][0])
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_cuda_products_agree_with_the_cpu():
    w = _trajectory()
    refs = [(slice(1, w.shape[0]), w[0])]
    g_cpu = Products("numpy").gram(w, refs)
    g_gpu = Products("cuda").gram(w, refs)
    assert np.abs(g_gpu - g_cpu).max() <= 1e-12 * np.abs(g_cpu).max()
    m = np.random.default_rng(1).standard_normal((w.shape[0], 4))
    np.testing.assert_allclose(
        Products("cuda").project(w, m), Products("numpy").project(w, m), rtol=2**-23, atol=0
    )
