"""Trajectories with a prescribed spectrum, a float64 reference SVD, and angle measures.

The reference is numpy's float64 SVD of the *same float32 W* the kernels see, so it measures
the kernels' own error, not the float32 rounding of the data.
"""

from __future__ import annotations

import numpy as np

from storage.layout import build_layout
from storage.trajectory import TrajectoryStore


def orthonormal(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((rows, cols)))
    return q


def delta_trajectory(t: int, d: int, cond: float, seed: int = 0) -> np.ndarray:
    """W (t, d) float32: theta0, then theta0 + X where X (t-1, d) has singular values
    log-spaced from 1 down to 1/cond."""
    rng = np.random.default_rng(seed)
    n = t - 1
    r = min(n, d)
    s = np.logspace(0, -np.log10(cond), r)
    x = (orthonormal(rng, n, r) * s) @ orthonormal(rng, d, r).T
    theta0 = rng.standard_normal(d)
    return np.vstack([theta0, theta0 + x]).astype(np.float32)


def centered_trajectory(t: int, d: int, cond: float, seed: int = 0) -> np.ndarray:
    """W (t, d) float32 whose checkpoints 1..t-1, centred, have singular values log-spaced from
    1 to 1/cond; their mean sits far from theta0 (as after a long run)."""
    rng = np.random.default_rng(seed)
    n = t - 1
    r = min(n - 1, d)
    j = np.eye(n) - 1.0 / n
    u = orthonormal(rng, n, r) if n == 1 else np.linalg.qr(j @ rng.standard_normal((n, r)))[0]
    s = np.logspace(0, -np.log10(cond), r)
    x = (u * s) @ orthonormal(rng, d, r).T + 3.0 * rng.standard_normal(d) / np.sqrt(d)
    theta0 = rng.standard_normal(d)
    return np.vstack([theta0, theta0 + x]).astype(np.float32)


def raw_trajectory(t: int, d: int, low: float = 3e-6, seed: int = 0) -> np.ndarray:
    """W (t, d) float32 where theta0 dominates: the fine-tuning moves span singular values from
    0.1 down to `low` times sigma_1 of W (so sigma_1/sigma_i reaches past 1e5)."""
    rng = np.random.default_rng(seed)
    theta0 = rng.standard_normal(d)
    sigma1 = np.sqrt(t) * np.linalg.norm(theta0)
    r = min(t - 1, d)
    s = sigma1 * np.logspace(-1, np.log10(low), r)
    x = (orthonormal(rng, t - 1, r) * s) @ orthonormal(rng, d, r).T
    return np.vstack([theta0, theta0 + x]).astype(np.float32)


def mode_matrix(w: np.ndarray, mode: str, ref_row: int = 0) -> np.ndarray:
    """X in float64 as the modes define it (delta and centered leave theta0's row out)."""
    w64 = w.astype(np.float64)
    if mode == "raw":
        return w64
    rows = [i for i in range(w.shape[0]) if i != ref_row]
    x = w64[rows] - w64[ref_row]
    if mode == "centered":
        x = x - x.mean(axis=0)
    return x


def reference_svd(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(V (D, r), s (r,)) of the float64 matrix x, with signs fixed as the kernels fix them:
    the largest-magnitude entry of each left singular vector is positive."""
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    idx = np.argmax(np.abs(u), axis=0)
    signs = np.sign(u[idx, np.arange(u.shape[1])])
    signs[signs == 0] = 1
    return vt.T * signs, s


def vector_angles(v: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Principal angle between each column of v and the same column of ref, in radians.

    Computed as atan2(|sin|, |cos|) in float64: arccos of a cosine near 1 would turn the
    float32 rounding of v's norm (1e-8) into a spurious 1e-4 rad.
    """
    v = v.astype(np.float64)
    v = v / np.linalg.norm(v, axis=0)
    ref = ref / np.linalg.norm(ref, axis=0)
    cos = np.sum(v * ref, axis=0)
    sin = np.linalg.norm(v - ref * cos, axis=0)
    return np.arctan2(sin, np.abs(cos))


def subspace_angles(v: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Principal angles between span(ref) and span(v), descending, in radians.

    From the sines (the part of ref outside span(v)), which stay accurate for small angles.
    """
    qv = np.linalg.qr(v.astype(np.float64))[0]
    qr = np.linalg.qr(ref.astype(np.float64))[0]
    sin = np.linalg.svd(qr - qv @ (qv.T @ qr), compute_uv=False)
    return np.arcsin(np.clip(sin, 0.0, 1.0))


def orth_error(v: np.ndarray) -> float:
    v = v.astype(np.float64)
    return float(np.abs(v.T @ v - np.eye(v.shape[1])).max())


def one_group_store(path, w: np.ndarray, chunk_cols: int, name: str = "w") -> TrajectoryStore:
    """A trajectory store with one group (layer.0) of size D holding the rows of w."""
    layout = build_layout([(f"encoder.layer.0.{name}", (w.shape[1],))])
    store = TrajectoryStore.create(path, layout, chunk_cols=chunk_cols, capacity=w.shape[0])
    for row in w:
        store.append({"layer.0": row})
    return store
