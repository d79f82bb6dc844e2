"""Exact right singular vectors of a short, wide trajectory matrix by the Gram route.

W (t x D) has t in the tens and D in the millions. Instead of an SVD of W, two passes over its
column chunks:

1. G = sum_c X_c X_c^T (t x t), accumulated in float64;
2. eigh(G) = U diag(S^2) U^T; then V_c = X_c^T U S^-1 (chunk by chunk, float64 products).

This is Spark's `RowMatrix.computeSVD` path for few columns and the Gram step of TSQR-free
out-of-core SVDs. Memory: O(t^2 + t * chunk). Flops: 2 t^2 D + 2 t k D.

Why float64: the Gram squares the condition number. With float32 accumulation the smallest
singular vectors of a trajectory whose spectrum spans 10^3 are wrong by 0.04 to 0.38 rad, and in
`raw` mode (|theta0| dominates, sigma_1/sigma_i up to 10^5) float32 gives NaN. float64 products
of float32 inputs are exact, so the only error is float64 accumulation and the eigensolver:
about eps64 * (sigma_1/sigma_i)^2, i.e. 1e-6 rad at a ratio of 10^5. Pass 2 runs in float64 for
the same reason: X^T u_i / sigma_i cancels catastrophically for small sigma_i.

Modes (what X is):
- `raw`: the selected checkpoints as stacked in the paper;
- `delta`: each checkpoint minus theta0 (row 0 of its trajectory), subtracted in float64;
- `centered`: the selected checkpoints minus their mean (PCA), computed as delta rows then
  centred on the small t x t Gram, so theta0 never cancels against itself in float64.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from storage.errors import InvalidInput
from worker.executors.base import tree_reduce
from worker.svd.backend import Products

MODES = ("raw", "delta", "centered")
DEFAULT_RCOND = 1e-5


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise InvalidInput(f"mode {mode!r} is not one of {list(MODES)}")
    return mode


@dataclass
class SmallSolve:
    """The small (t x t) part of a basis: what pass 2 needs, plus the spectrum."""

    m: np.ndarray  # (n, k) float64: V = X^T m
    singular_values: np.ndarray  # (k,) float64, descending
    energy: np.ndarray  # (k,) float64: fraction of total squared norm per component
    total_energy: float
    requested_rank: int

    @property
    def rank(self) -> int:
        return int(self.singular_values.size)


def fix_signs(u: np.ndarray) -> np.ndarray:
    """Flip columns so the entry of largest magnitude in each column of U is positive.

    U is the small left factor; fixing its signs fixes V = X^T U S^-1, so the same input always
    gives the same basis, whatever eigensolver or executor produced it.
    """
    idx = np.argmax(np.abs(u), axis=0)
    signs = np.sign(u[idx, np.arange(u.shape[1])])
    signs[signs == 0] = 1.0
    return u * signs


def centering_transform(n: int) -> np.ndarray:
    """J = I - 11^T / n, the centring projector on n rows."""
    return np.eye(n) - np.full((n, n), 1.0 / n)


def row_transform(n_all: int, members=None, mode: str = "raw") -> np.ndarray:
    """T (n, n_all): the rows of one basis' matrix as combinations of the computation's rows.

    Selection of the members (default all), then, in `centered` mode, the centring projector
    on them. A basis is the SVD of T X; both the Gram and the randomized route work with T.
    """
    idx = np.arange(n_all) if members is None else np.asarray(members, dtype=np.int64)
    if idx.size == 0:
        raise InvalidInput("no rows were selected for this basis")
    if idx.min() < 0 or idx.max() >= n_all:
        raise InvalidInput(f"member rows {idx.tolist()} are outside the {n_all} rows computed")
    if np.unique(idx).size != idx.size:
        raise InvalidInput(f"member rows {idx.tolist()} name a row twice")
    t = np.eye(n_all)[idx]
    if mode == "centered":
        t = centering_transform(idx.size) @ t
    return t


def check_rank(k: int, n: int) -> None:
    if k < 1 or k > n:
        raise InvalidInput(f"trajectory has {n} rows but rank {k} was asked for; use 1 <= k <= {n}")


def keep_count(s: np.ndarray, k: int, rcond: float) -> int:
    """How many of the descending singular values s to keep: at most k, and only those above
    rcond * s[0] (the rest are rounding noise of a rank-deficient X; dividing by them would
    turn V into noise, NaN or Inf)."""
    if s.size == 0 or not s[0] > 0 or not np.isfinite(s[0]):
        raise InvalidInput(
            "the selected rows are all zero (in this mode there is nothing to "
            "span): a trajectory with one checkpoint in delta mode, say"
        )
    return min(k, int(np.count_nonzero(s > rcond * s[0])))


def solve_gram(
    g: np.ndarray,
    k: int,
    *,
    mode: str = "raw",
    members: np.ndarray | None = None,
    rcond: float = DEFAULT_RCOND,
) -> SmallSolve:
    """Eigen-decompose the Gram of the chosen rows and return the pass-2 matrix.

    g: (n, n) float64 Gram of X (all rows of a computation); members: which of its n rows
    form this basis (default all). For `centered`, the members are centred on the small Gram.
    Singular values at or below rcond * sigma_1 are dropped (never divided by), so the rank
    returned can be below k.
    """
    check_mode(mode)
    if not np.all(np.isfinite(g)):
        raise InvalidInput("the trajectory holds NaN or Inf values; its Gram is not finite")
    t = row_transform(g.shape[0], members, mode)
    check_rank(k, t.shape[0])
    gb = t @ g @ t.T
    gb = (gb + gb.T) / 2  # exact symmetry for eigh
    lam, u = np.linalg.eigh(gb)
    lam, u = lam[::-1], u[:, ::-1]
    total = float(max(np.trace(gb), 0.0))
    s = np.sqrt(np.clip(lam, 0.0, None))
    keep = keep_count(s, k, rcond)
    u = fix_signs(u[:, :keep])
    s = s[:keep]
    m = t.T @ (u / s)  # (n_all, keep)
    energy = (s**2) / total if total > 0 else np.zeros_like(s)
    return SmallSolve(m=m, singular_values=s, energy=energy, total_energy=total, requested_rank=k)


@dataclass
class Basis:
    """An in-memory basis of one group: V (D, k) float32 with its spectrum."""

    v: np.ndarray
    singular_values: np.ndarray
    energy: np.ndarray
    mode: str

    @property
    def rank(self) -> int:
        return self.v.shape[1]


def gram_basis(
    chunks: Iterable[np.ndarray],
    k: int,
    *,
    mode: str = "raw",
    ref_row: int | None = 0,
    rcond: float = DEFAULT_RCOND,
    device: str | None = None,
) -> Basis:
    """Top-k right singular vectors of W (t x D) given as a re-iterable of column chunks.

    Pass 1 accumulates G = sum_c X_c X_c^T in float64 (n x n); eigh(G) gives U and S^2; pass 2
    forms V_c = X_c^T U S^-1. Memory: O(t^2 + t * chunk). Exact up to rounding. Reference:
    the Gram path of Spark's `RowMatrix.computeSVD` for few columns.

    What X is (see `member_chunks`): `raw`, all t rows; `delta`, the rows other than `ref_row`
    minus that row (theta0); `centered`, the same rows centred (with ref_row=None: all t rows
    centred). The per-chunk Grams are summed as a pairwise tree in chunk order, the order the
    executors use, so the same chunking gives the same bytes as `compute_bases`.
    """
    check_mode(mode)
    prod = Products(device)
    blocks = member_chunks(chunks, mode, ref_row)
    g = tree_reduce([prod.gram(x, refs) for x, refs in blocks], operator.add)
    solve = solve_gram(g, k, mode=mode, rcond=rcond)
    v = np.concatenate([prod.project(x, solve.m, refs) for x, refs in blocks], axis=0)
    return Basis(v=v, singular_values=solve.singular_values, energy=solve.energy, mode=mode)


RefRows = list[tuple[slice, np.ndarray]]


def member_chunks(
    chunks: Iterable[np.ndarray], mode: str, ref_row: int | None
) -> list[tuple[np.ndarray, RefRows | None]]:
    """Each column chunk of W (t, c) as (rows of X, theta0 to subtract from them in float64).

    The rows are selected before any product, exactly as a chunk task reads them from a store,
    so the in-memory and store routes multiply the same (n, c) matrices.
    """
    check_mode(mode)
    chunk_list = list(chunks)
    if not chunk_list:
        raise InvalidInput("no columns to decompose")
    t = chunk_list[0].shape[0]
    if any(c.ndim != 2 or c.shape[0] != t for c in chunk_list):
        raise InvalidInput(f"column chunks must all be 2-d with {t} rows")
    if mode == "raw":
        return [(c, None) for c in chunk_list]
    if ref_row is None and mode == "delta":
        raise InvalidInput("delta mode subtracts theta0: give ref_row, the row that holds it")
    if ref_row is not None and not 0 <= ref_row < t:
        raise InvalidInput(f"ref_row {ref_row} is not a row of a trajectory with {t} rows")
    if ref_row is None:
        # PCA of all rows: row 0 is subtracted only as a shift (centring removes it again), so
        # the large common part never cancels against itself on the Gram.
        rows, shift = np.arange(t), 0
    else:
        rows, shift = np.array([i for i in range(t) if i != ref_row]), ref_row
    if rows.size == 0:
        raise InvalidInput(f"a {mode} basis needs a checkpoint besides theta0; W has {t} row(s)")
    n = rows.size
    return [(c[rows], [(slice(0, n), c[shift])]) for c in chunk_list]


def svd_basis(
    w: np.ndarray,
    k: int,
    *,
    mode: str = "raw",
    ref_row: int | None = 0,
    chunk_cols: int = 1 << 18,
    **kw,
) -> Basis:
    """`gram_basis` on an in-memory (t, D) array, chunked by columns without copies."""
    return gram_basis(column_chunks(w, chunk_cols), k, mode=mode, ref_row=ref_row, **kw)


def column_chunks(w: np.ndarray, chunk_cols: int) -> list[np.ndarray]:
    """Views of w (t, D) on consecutive column ranges of chunk_cols."""
    if w.ndim != 2:
        raise InvalidInput(f"expected a (t, D) matrix, got shape {w.shape}")
    if chunk_cols < 1:
        raise InvalidInput(f"chunk_cols must be positive, got {chunk_cols}")
    return [w[:, a : a + chunk_cols] for a in range(0, w.shape[1], chunk_cols)]
