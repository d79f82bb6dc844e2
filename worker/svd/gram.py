"""Exact right singular vectors of a short, wide trajectory matrix by the Gram route.

W (t x D) has t in the tens and D in the millions. Instead of an SVD of W, two passes over its
column chunks:

1. G = sum_c X_c X_c^T (n x n), accumulated in float64;
2. eigh(G) = U diag(S^2) U^T; then V_c = X_c^T U S^-1 (chunk by chunk, float64 products).

This is Spark's `RowMatrix.computeSVD` path for few columns and the Gram step of TSQR-free
out-of-core SVDs. Memory: O(t^2 + t * chunk). Flops: 2 t^2 D + 2 t k D.

Why float64: the Gram squares the condition number. With float32 accumulation the smallest
singular vectors of a trajectory whose spectrum spans 10^3 are wrong by 0.02 to 0.38 rad, and in
`raw` mode (|theta0| dominates, sigma_1/sigma_i up to 10^5) float32 gives NaN. float64 products
of float32 inputs are exact, so the only error is float64 accumulation and the eigensolver:
about eps64 * (sigma_1/sigma_i)^2 relative on sigma_i^2, 1e-10 at a ratio of 10^3. Pass 2 runs
in float64 for the same reason: X^T u_i / sigma_i cancels catastrophically for small sigma_i.

Modes (what X is):
- `raw`: the selected checkpoints as stacked in the paper. At a ratio of 10^5 the bound above
  reaches 1e-6 (measured: |V^T V - I| = 1.03e-6), so raw mode never forms that Gram: the rows
  are shifted by theta0 (r) in float64 and r is appended as one more row, Z = [W - 1 r^T; r^T].
  Z's Gram [[K, a], [a^T, |r|^2]] keeps the large |r|^2 apart from the small K; the Schur
  complement K - a a^T / |r|^2 gives a factor F with F F^T = Gram(Z), and the SVD of
  [I | 1] F (n x (n+1)) has absolute error eps64 * sigma_1, i.e. 1e-11 relative at 10^5.
- `delta`: each checkpoint minus theta0 (row 0 of its trajectory), subtracted in float64;
- `centered`: the selected checkpoints minus their mean (PCA), computed as delta rows then
  centred on the small Gram, so theta0 never cancels against itself in float64.

A basis is always the SVD of T Z for a small row transform T (`row_transform`: selection of
member rows, centring, and [I | 1] for the shift row), so several bases (unified, zero-shot)
come from one Gram of all rows.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from storage.errors import InvalidInput
from storage.vocabulary import BasisMode, parse
from worker.executors.base import tree_reduce
from worker.executors.local import LocalExecutor
from worker.svd.backend import Products, RowBlock

# Singular values at or below rcond * sigma_1 are dropped, per mode: the cut keeps every
# direction the kernel computes accurately. delta/centered go through eigh of the Gram, whose
# error on a vector grows as (sigma_1/sigma_i)^2 eps64 (measured on a 1e7 spectrum: 2.9e-4 rad at
# 1e-5, 5.8e-3 below 1e-6 in delta mode; 1.1e-3 and 3.6e-2 centered). raw solves through a
# factor (see `shifted_factor`): every vector of a spectrum reaching 1e-6 within 7.5e-5 rad, and
# all 32 directions of a real MiniLM trajectory (down to 5e-6) within 8e-6 rad, where the old
# common cut of 1e-5 dropped 3 to 19 of them.
RCOND = {BasisMode.RAW: 1e-7, BasisMode.DELTA: 1e-5, BasisMode.CENTERED: 1e-5}


def resolve_rcond(mode: BasisMode | str, rcond: float | None, *, factored: bool = True) -> float:
    """The cutoff to use: the one given, or the mode's default (`RCOND`). factored=False: raw
    rows decomposed without the shift row (eigh of their Gram) or by the randomized route,
    whose accuracy is that of the Gram route, so they get the delta cut."""
    if rcond is None:
        return RCOND[check_mode(mode) if factored else BasisMode.DELTA]
    if not 0 <= rcond < 1:
        raise InvalidInput(f"rcond must be in [0, 1), got {rcond}")
    return float(rcond)


def check_mode(mode: BasisMode | str) -> BasisMode:
    """`mode` as a BasisMode; InvalidInput naming the modes otherwise."""
    return parse(BasisMode, mode, "mode")


@dataclass
class SmallSolve:
    """The small (t x t) part of a basis: what pass 2 needs, plus the spectrum."""

    m: np.ndarray  # (n, k) float64: V = X^T m
    singular_values: np.ndarray  # (k,) float64, descending
    energy: np.ndarray  # (k,) float64: fraction of total squared norm per component
    total_energy: float
    requested_rank: int
    # (k,) RMS over the basis' rows of their motion from theta0 along each v_k (see
    # `motion_extent`); None where it cannot be had from the small side alone.
    extent: np.ndarray | None = None

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
    fixed: np.ndarray = u * signs
    return fixed


def centering_transform(n: int) -> np.ndarray:
    """J = I - 11^T / n, the centring projector on n rows."""
    j: np.ndarray = np.eye(n) - np.full((n, n), 1.0 / n)
    return j


def row_transform(
    n_all: int,
    members: Sequence[int] | np.ndarray | None = None,
    mode: BasisMode | str = BasisMode.RAW,
    *,
    augmented: bool = False,
) -> np.ndarray:
    """T (n, n_all [+1]): the rows of one basis' matrix as combinations of the computed rows.

    Selection of the members (indices into the n_all rows of X; default all), then, in
    `centered` mode, the centring projector on them. With augmented=True the computed rows
    are Z = [X; r^T] (X shifted by r, raw mode) and T gets a last column that adds r back:
    T = T_sel [I | 1]. A basis is the SVD of T Z; both the Gram and the randomized route use T.
    """
    idx = np.arange(n_all) if members is None else np.asarray(members, dtype=np.int64)
    if idx.size == 0:
        raise InvalidInput("no rows were selected for this basis")
    if idx.min() < 0 or idx.max() >= n_all:
        raise InvalidInput(f"member rows {idx.tolist()} are outside the {n_all} rows computed")
    if np.unique(idx).size != idx.size:
        raise InvalidInput(f"member rows {idx.tolist()} name a row twice")
    t = np.eye(n_all)[idx]
    if check_mode(mode) == BasisMode.CENTERED:
        t = centering_transform(idx.size) @ t
    if augmented:
        t = np.hstack([t, t.sum(axis=1, keepdims=True)])
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


def motion_extent(u: np.ndarray, s: np.ndarray) -> np.ndarray:
    """RMS over rows of the coordinates U S of a basis' rows on its vectors: the trajectory's
    own extent along each v_k, when the rows are motions from theta0 (delta mode) or from their
    mean (centered mode). u: (n, k) left singular vectors, unit columns, so this is s_k
    sqrt(mean_i u_ik^2) = s_k / sqrt(n) exactly; kept general for the randomized route."""
    extent: np.ndarray = s * np.sqrt(np.mean(u**2, axis=0))
    return extent


def solve_gram(
    g: np.ndarray,
    k: int,
    *,
    mode: BasisMode | str = BasisMode.RAW,
    members: np.ndarray | None = None,
    rcond: float | None = None,
    augmented: bool = False,
) -> SmallSolve:
    """The SVD of the chosen rows from their Gram, and the pass-2 matrix.

    g: float64 Gram of the computed rows Z (n_all x n_all; with augmented=True, n_all + 1 with
    the shift row last, see the module docstring); members: which rows of X form this basis
    (default all), centred on the small Gram in `centered` mode. Singular values at or below
    rcond * sigma_1 are dropped (never divided by), so the rank returned can be below k.
    Returns m with V = Z^T m.
    """
    mode = check_mode(mode)
    rcond = resolve_rcond(mode, rcond, factored=augmented or mode != BasisMode.RAW)
    if not np.all(np.isfinite(g)):
        raise InvalidInput("the trajectory holds NaN or Inf values; its Gram is not finite")
    n_all = g.shape[0] - int(augmented)
    t = row_transform(n_all, members, mode, augmented=augmented)
    check_rank(k, t.shape[0])
    if augmented:
        # SVD of a factor of T Gram(Z) T^T: the large |r|^2 never meets the small K in one sum.
        u, s, _ = np.linalg.svd(t @ shifted_factor(g), full_matrices=False)
        total = float(np.sum(s**2))
    else:
        gb = t @ g @ t.T
        gb = (gb + gb.T) / 2  # exact symmetry for eigh
        lam, u = np.linalg.eigh(gb)
        lam, u = lam[::-1], u[:, ::-1]
        total = float(max(np.trace(gb), 0.0))
        s = np.sqrt(np.clip(lam, 0.0, None))
    keep = keep_count(s, k, rcond)
    u = fix_signs(u[:, :keep])
    s = s[:keep]
    m = t.T @ (u / s)  # (n_all [+1], keep)
    energy = (s**2) / total if total > 0 else np.zeros_like(s)
    if augmented:
        # The raw rows are theta0 + motion, and v_1 is nearly theta0's own direction: the extent
        # that matters is the motion's. The computed rows X = W - 1 theta0^T are the motions, and
        # their coordinates X V = Gram(Z)[:n] m come from the small side alone.
        idx = np.arange(n_all) if members is None else np.asarray(members, dtype=np.int64)
        coords = (g @ m)[:n_all][idx]
        extent = np.sqrt(np.mean(coords**2, axis=0))
    elif mode == BasisMode.RAW:
        extent = None  # raw rows with no theta0 to measure motion from
    else:
        extent = motion_extent(u, s)
    return SmallSolve(
        m=m,
        singular_values=s,
        energy=energy,
        total_energy=total,
        requested_rank=k,
        extent=extent,
    )


def shifted_factor(g: np.ndarray) -> np.ndarray:
    """F ((n+1) x (n+1)) with F F^T = g, for the Gram g = [[K, a], [a^T, g0]] of Z = [X; r^T].

    Block LDL^T with g0 = |r|^2 as the pivot: g = L diag(S, g0) L^T, S = K - a a^T / g0 (the
    Schur complement, of the size of K, PSD), so F = [[S^1/2, a / sqrt(g0)], [0, sqrt(g0)]].
    Every float64 sum here is of terms of the size of its result: errors stay relative to |X|^2,
    not |r|^2. Memory and time O(n^3) on the small side only.
    """
    n = g.shape[0] - 1
    kk, a, g0 = g[:n, :n], g[:n, n], float(g[n, n])
    f = np.zeros_like(g)
    if g0 > 0:
        schur = kk - np.outer(a, a) / g0
        f[:n, n] = a / np.sqrt(g0)
        f[n, n] = np.sqrt(g0)
    else:  # r = 0: nothing was shifted
        schur = kk
    lam, q = np.linalg.eigh((schur + schur.T) / 2)
    f[:n, :n] = q * np.sqrt(np.clip(lam, 0.0, None))
    return f


@dataclass
class Basis:
    """An in-memory basis of one group: V (D, k) float32 with its spectrum."""

    v: np.ndarray
    singular_values: np.ndarray
    energy: np.ndarray
    mode: BasisMode

    @property
    def rank(self) -> int:
        return int(self.v.shape[1])


def gram_basis(
    chunks: Iterable[np.ndarray],
    k: int,
    *,
    mode: BasisMode | str = BasisMode.RAW,
    ref_row: int | None = 0,
    rcond: float | None = None,
    device: str | None = None,
    workers: int | None = None,
) -> Basis:
    """Top-k right singular vectors of W (t x D) given as a re-iterable of column chunks.

    Pass 1 accumulates G = sum_c Z_c Z_c^T in float64 (n x n); the small SVD gives U and S;
    pass 2 forms V_c = Z_c^T U S^-1. Memory: O(t^2 + t * chunk). Exact up to rounding (see the
    module docstring for the error). Reference: the Gram path of Spark's
    `RowMatrix.computeSVD` for few columns.

    What X is (see `member_chunks`): `raw`, all t rows (shifted by row `ref_row`, if given,
    for accuracy); `delta`, the rows other than `ref_row` minus that row (theta0);
    `centered`, the same rows centred (with ref_row=None: all t rows centred). Chunk Grams
    are summed as a pairwise tree in chunk order, the order the executors use, so the same
    chunking gives the same bytes as `compute_bases`.
    """
    mode = check_mode(mode)
    prod = Products(device)
    blocks = member_chunks(chunks, mode, ref_row)
    augmented = blocks[0][2] is not None
    # Chunks run side by side on threads (each product on one BLAS thread, see backend.py);
    # the Grams are summed in the executors' tree order, so bytes match compute_bases.
    with LocalExecutor(workers) as pool:
        g = tree_reduce(pool.map(lambda b: prod.gram(*b), blocks), operator.add)
        solve = solve_gram(g, k, mode=mode, rcond=rcond, augmented=augmented)
        # Each chunk writes its rows of V in place: no list of parts and no concatenation
        # (a second (D, k) copy, 0.45 s and 907 MB at D = 7M, k = 32).
        offsets = np.cumsum([0] + [b[0].shape[1] for b in blocks])
        v = np.empty((int(offsets[-1]), solve.m.shape[1]), dtype=np.float32)
        pool.map(
            lambda i: prod.project(
                blocks[i][0],
                solve.m,
                blocks[i][1],
                blocks[i][2],
                out=v[offsets[i] : offsets[i + 1]],
            ),
            range(len(blocks)),
        )
    return Basis(v=v, singular_values=solve.singular_values, energy=solve.energy, mode=mode)


def member_chunks(
    chunks: Iterable[np.ndarray], mode: BasisMode | str, ref_row: int | None
) -> list[RowBlock]:
    """Each column chunk of W (t, c) as the rows of Z: (rows of X, the row to subtract from
    them in float64, the shift row appended after them in raw mode with a ref_row, else None).

    The rows are those a chunk task reads from a store, so the in-memory and store routes
    multiply the same matrices. Slices, not copies, where the rows are contiguous.
    """
    mode = check_mode(mode)
    chunk_list = list(chunks)
    if not chunk_list:
        raise InvalidInput("no columns to decompose")
    t = chunk_list[0].shape[0]
    if any(c.ndim != 2 or c.shape[0] != t for c in chunk_list):
        raise InvalidInput(f"column chunks must all be 2-d with {t} rows")
    if ref_row is None and mode == BasisMode.DELTA:
        raise InvalidInput("delta mode subtracts theta0: give ref_row, the row that holds it")
    if ref_row is not None and not 0 <= ref_row < t:
        raise InvalidInput(f"ref_row {ref_row} is not a row of a trajectory with {t} rows")
    if mode == BasisMode.RAW:
        if ref_row is None:
            return [(c, None, None) for c in chunk_list]
        return [(c, [(slice(0, t), c[ref_row])], c[ref_row]) for c in chunk_list]
    rows: slice | np.ndarray
    if ref_row is None:
        # PCA of all rows: row 0 is subtracted only as a shift (centring removes it again), so
        # the large common part never cancels against itself on the Gram.
        rows, shift = slice(0, t), 0
    elif ref_row in (0, t - 1):
        rows, shift = slice(1, t) if ref_row == 0 else slice(0, t - 1), ref_row
    else:
        rows, shift = np.array([i for i in range(t) if i != ref_row]), ref_row
    n = t if ref_row is None else t - 1
    if n == 0:
        raise InvalidInput(f"a {mode} basis needs a checkpoint besides theta0; W has {t} row(s)")
    return [(c[rows], [(slice(0, n), c[shift])], None) for c in chunk_list]


def svd_basis(
    w: np.ndarray,
    k: int,
    *,
    mode: BasisMode | str = BasisMode.RAW,
    ref_row: int | None = 0,
    chunk_cols: int = 1 << 18,
    **kw: Any,
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
