"""Randomized SVD of a long trajectory (many checkpoints) streamed by column chunks.

When a checkpoint is kept every step, W (n x D) has n in the thousands and the exact route's
Gram (n x n, 2 n^2 D flops) no longer pays off for a basis of k << n vectors. Halko, Martinsson
and Tropp (2011, "Finding structure with randomness", Algorithms 4.3/4.4 and 5.1) find the
top-k subspace from a sketch of l = k + p columns instead. With T the basis' row transform
(selection, centring, the raw-mode shift row; see `gram.row_transform`) and X the rows in
float64 (theta0 subtracted as in the Gram route):

1. sketch:  Y = T X Omega = sum_c T X_c Omega_c (n x l); Omega_c (c x l) Gaussian, generated
   on the worker from (seed, group, column) so nothing D-sized is stored or shipped;
2. q power iterations: Q = qr(Y); Y <- T X X^T T^T Q = sum_c T X_c (X_c^T T^T Q);
3. Rayleigh-Ritz: C = B B^T with B = Q^T T X, accumulated per chunk in float64 (l x l);
   eigh(C) = U_B S^2 U_B^T;
4. pass 2 (the Gram route's projection): V = X^T T^T Q U_B S^-1, chunk by chunk.

Every pass is one map over column blocks (`worker.svd.sketch`: chunk tasks that read their
block on the worker) whose results (n x l, small) are summed by the executor's map_reduce, so
the route runs on the local, Dask and Ray executors like the Gram route. Passes over the data:
q + 3 (sketch, q power steps, Rayleigh-Ritz, projection).
Memory: O(n l + l^2) per block result, O(n * chunk) per worker. Flops: about 2 (2q + 3) n l D.
Error (HMT Thm. 10.6): the subspace error decays like (sigma_{l+1}/sigma_k)^(2q+1); QR is
taken only on the short side (n x l), which limits resolvable singular values to about
sqrt(eps64) ~ 1e-8 of sigma_1, far below the cutoff `rcond` anyway. C is nearly diagonal with
entries graded like sigma_i sigma_j, so even raw-mode vectors at sigma_1/sigma_i = 1e5 come out
within 3e-8 rad when l covers them (measured).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from storage.errors import InvalidInput
from storage.vocabulary import BasisMode
from worker.executors.base import Executor, tree_reduce
from worker.svd.backend import Products
from worker.svd.gram import (
    Basis,
    SmallSolve,
    check_mode,
    check_rank,
    column_chunks,
    fix_signs,
    keep_count,
    member_chunks,
    motion_extent,
    resolve_rcond,
    row_transform,
)
from worker.svd.sketch import (
    PowerPart,
    PowerTask,
    SketchPart,
    SketchTask,
    power_block,
    power_part,
    sketch_block,
    sketch_part,
)
from worker.svd.tasks import BlockTask


@dataclass(frozen=True)
class SketchParams:
    """Randomized SVD settings: l = k + oversample sketch columns, power_iters power
    iterations, and the seed of the Gaussian test matrix."""

    oversample: int = 10
    power_iters: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("oversample", "power_iters", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
                raise InvalidInput(f"{name} must be a non-negative integer, got {value!r}")

    def to_dict(self) -> dict[str, int]:
        return {
            "oversample": int(self.oversample),
            "power_iters": int(self.power_iters),
            "seed": int(self.seed),
        }


# --------------------------------------------------------------------------- the small side
@dataclass(frozen=True)
class Target:
    """One basis of a computation: its member rows (None = all) and rank."""

    k: int
    members: Sequence[int] | None = None


RunSketch = Callable[[int, np.ndarray], dict[Hashable, SketchPart]]
RunPower = Callable[[dict[Hashable, np.ndarray], bool], dict[Hashable, PowerPart]]


def randomized_solves(
    run_sketch: RunSketch,
    run_power: RunPower,
    n: int,
    targets: Sequence[Target],
    *,
    mode: BasisMode | str,
    params: SketchParams,
    rcond: float | None = None,
    augmented: bool = False,
) -> dict[Hashable, list[SmallSolve]]:
    """Drive the sketch, power and Rayleigh-Ritz passes for several bases at once.

    n is the number of rows of X; with augmented=True the computed rows are Z = [X; r^T]
    (raw mode, see `gram.row_transform`). run_sketch(width, e) and run_power(ms, rayleigh) run
    one pass over the data and return the summed parts per key (a layer group, or one key for
    a global basis). All targets share every pass: the sketch Z Omega is computed once for all
    rows and each target takes T Y; the power passes multiply by all targets' T^T Q side by
    side. Returns, per key, one SmallSolve per target (V = Z^T m), like `gram.solve_gram`.
    """
    mode = check_mode(mode)
    rcond = resolve_rcond(mode, rcond, factored=False)
    ts = [row_transform(n, tg.members, mode, augmented=augmented) for tg in targets]
    for tg, t in zip(targets, ts, strict=True):
        check_rank(tg.k, t.shape[0])
    widths = [min(tg.k + params.oversample, t.shape[0]) for tg, t in zip(targets, ts, strict=True)]
    offsets = np.concatenate([[0], np.cumsum(widths)]).astype(int)
    members = [np.arange(n) if tg.members is None else np.asarray(tg.members) for tg in targets]
    e = _energy_weights(n, members, mode, augmented)
    sk = run_sketch(max(widths), e)
    totals = {key: _totals(part, members, mode, augmented) for key, part in sk.items()}
    qs = {
        key: [_orth(t @ part.y[:, :w]) for t, w in zip(ts, widths, strict=True)]
        for key, part in sk.items()
    }
    qs, cs = _power_passes(run_power, qs, ts, offsets, params.power_iters)
    out: dict[Hashable, list[SmallSolve]] = {}
    for key, qk in qs.items():
        c = cs[key]
        out[key] = [
            _ritz(
                c[offsets[r] : offsets[r + 1], offsets[r] : offsets[r + 1]],
                qk[r],
                ts[r],
                targets[r].k,
                totals[key][r],
                rcond,
                extent=mode != BasisMode.RAW,
            )
            for r in range(len(ts))
        ]
    return out


def _power_passes(
    run_power: RunPower,
    qs: dict[Hashable, list[np.ndarray]],
    ts: Sequence[np.ndarray],
    offsets: np.ndarray,
    power_iters: int,
) -> tuple[dict[Hashable, list[np.ndarray]], dict[Hashable, np.ndarray]]:
    """The power passes, then the Rayleigh-Ritz one, all targets side by side (target r in
    columns offsets[r]:offsets[r + 1]). Returns the final Q per key and target, and C per key."""
    for it in range(power_iters + 1):
        rayleigh = it == power_iters
        ms = {
            key: np.hstack([t.T @ q for t, q in zip(ts, qk, strict=True)]) for key, qk in qs.items()
        }
        pw = run_power(ms, rayleigh)
        if not rayleigh:
            qs = {
                key: [
                    _orth(t @ pw[key].z[:, offsets[r] : offsets[r + 1]]) for r, t in enumerate(ts)
                ]
                for key in qs
            }
    cs = {}
    for key in qs:
        c = pw[key].c
        assert c is not None  # the last power pass ran with rayleigh=True, which sets c
        cs[key] = c
    return qs, cs


def _orth(y: np.ndarray) -> np.ndarray:
    if not np.all(np.isfinite(y)):
        raise InvalidInput("the trajectory holds NaN or Inf values; its sketch is not finite")
    return np.linalg.qr(y, mode="reduced")[0]


def _energy_weights(
    n: int, members: Sequence[np.ndarray], mode: BasisMode, augmented: bool
) -> np.ndarray:
    """Row weights e whose Z Z^T e gives each target's total energy: the member indicator of
    each centred target, or the shift row alone in raw mode."""
    if mode == BasisMode.CENTERED:
        e = np.zeros((n, len(members)))
        for j, idx in enumerate(members):
            e[idx, j] = 1.0
        return e
    if augmented:
        e = np.zeros((n + 1, 1))
        e[n, 0] = 1.0
        return e
    return np.zeros((n + int(augmented), 0))


def _totals(
    part: SketchPart, members: Sequence[np.ndarray], mode: BasisMode, augmented: bool
) -> list[float]:
    """|T Z|_F^2 per target without the Gram: the member rows' squared norms; minus
    |sum|^2 / n_r when centred (the energy removed with the mean); plus 2 x_i.r + |r|^2 per row
    when the rows were shifted by r (raw mode)."""
    out = []
    for j, idx in enumerate(members):
        total = float(part.sq_norms[idx].sum())
        if mode == BasisMode.CENTERED:
            total -= float(part.gram_e[idx, j].sum()) / idx.size
        elif augmented:
            col = part.gram_e[:, 0]  # Gram(Z) e_last = (X r, |r|^2)
            total += float(2 * col[idx].sum() + idx.size * col[-1])
        out.append(max(total, 0.0))
    return out


def _ritz(
    c: np.ndarray,
    q: np.ndarray,
    t: np.ndarray,
    k: int,
    total: float,
    rcond: float,
    extent: bool = True,
) -> SmallSolve:
    """Rayleigh-Ritz on span(T^T Q): C = B B^T, B = Q^T T X."""
    c = (c + c.T) / 2
    lam, ub = np.linalg.eigh(c)
    lam, ub = lam[::-1], ub[:, ::-1]
    s = np.sqrt(np.clip(lam, 0.0, None))
    keep = keep_count(s, k, rcond)
    u = fix_signs(q @ ub[:, :keep])  # (n_r, keep) left singular vectors of T X
    s = s[:keep]
    m = t.T @ (u / s)
    energy = (s**2) / total if total > 0 else np.zeros_like(s)
    return SmallSolve(
        m=m,
        singular_values=s,
        energy=energy,
        total_energy=total,
        requested_rank=k,
        # Raw rows carry theta0, whose coordinates the sketch does not keep apart.
        extent=motion_extent(u, s) if extent else None,
    )


# --------------------------------------------------------------------------- entry points
def randomized_basis(
    w: np.ndarray,
    k: int,
    *,
    mode: BasisMode | str = BasisMode.RAW,
    ref_row: int | None = 0,
    oversample: int = 10,
    power_iters: int = 2,
    seed: int = 0,
    chunk_cols: int = 1 << 18,
    rcond: float | None = None,
    device: str | None = None,
    group: str = "",
) -> Basis:
    """Top-k right singular vectors of an in-memory W (t, D) by randomized SVD.

    Same modes and ref_row as `gram.svd_basis`. `group` is mixed into Omega's seed (the store
    route uses the layer group's name): with the same group, seed and chunking this gives the
    same bytes as `compute_bases(..., method=RandomizedMethod())`. Memory: O(t * chunk + t * l).
    """
    params = SketchParams(oversample, power_iters, seed)
    mode = check_mode(mode)
    blocks = member_chunks(column_chunks(w, chunk_cols), mode, ref_row)
    augmented = blocks[0][2] is not None
    starts = np.concatenate([[0], np.cumsum([b[0].shape[1] for b in blocks])]).astype(int)
    prod = Products(device)

    def run_sketch(width: int, e: np.ndarray) -> dict[Hashable, SketchPart]:
        parts = [
            sketch_part(b, group=group, start=int(a), seed=seed, width=width, e=e, device=device)
            for b, a in zip(blocks, starts, strict=False)
        ]
        return {group: tree_reduce(parts, operator.add)}

    def run_power(ms: dict[Hashable, np.ndarray], rayleigh: bool) -> dict[Hashable, PowerPart]:
        parts = [power_part(b, ms[group], rayleigh=rayleigh, device=device) for b in blocks]
        return {group: tree_reduce(parts, operator.add)}

    n = blocks[0][0].shape[0]  # rows of X; Z adds the shift row when augmented
    (sol,) = randomized_solves(
        run_sketch,
        run_power,
        n,
        [Target(k)],
        mode=mode,
        params=params,
        rcond=rcond,
        augmented=augmented,
    )[group]
    v = np.concatenate([prod.project(x, sol.m, refs, app) for x, refs, app in blocks], axis=0)
    return Basis(v=v, singular_values=sol.singular_values, energy=sol.energy, mode=mode)


def randomized_on_executor(
    executor: Executor,
    blocks: Sequence[BlockTask],
    key: Callable[[BlockTask], Hashable],
    n: int,
    targets: Sequence[Target],
    *,
    mode: BasisMode | str,
    params: SketchParams,
    rcond: float | None = None,
    augmented: bool = False,
    progress: Callable[[str, int], Callable[[int], None]] | None = None,
) -> dict[Hashable, list[SmallSolve]]:
    """`randomized_solves` with each pass a map_reduce of chunk tasks that read their own block
    from the store on the worker. progress(phase, total) returns a per-task callback."""

    def cb(phase: str) -> Callable[[int], None] | None:
        return progress(phase, len(blocks)) if progress else None

    def run_sketch(width: int, e: np.ndarray) -> dict[Hashable, SketchPart]:
        tasks = [SketchTask(b, params.seed, width, e) for b in blocks]
        return executor.map_reduce(
            sketch_block, tasks, key=lambda tk: key(tk.block), progress=cb("sketch")
        )

    passes = iter(range(1, params.power_iters + 2))

    def run_power(ms: dict[Hashable, np.ndarray], rayleigh: bool) -> dict[Hashable, PowerPart]:
        phase = "rayleigh" if rayleigh else f"power {next(passes)}"
        tasks = [PowerTask(b, ms[key(b)], rayleigh) for b in blocks]
        return executor.map_reduce(
            power_block, tasks, key=lambda tk: key(tk.block), progress=cb(phase)
        )

    return randomized_solves(
        run_sketch,
        run_power,
        n,
        targets,
        mode=mode,
        params=params,
        rcond=rcond,
        augmented=augmented,
    )
