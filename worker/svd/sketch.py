"""Per-block pieces of the randomized route: the test matrix, the pass results, chunk tasks.

Each pass of `worker.svd.randomized` is a map over column blocks of Z (n x c, theta0
subtracted in float64 as in the Gram route) whose results add up: `SketchPart` (Z Omega, row
norms, Z Z^T e) and `PowerPart` (Z Z^T M and, in the Rayleigh-Ritz pass, M^T Z Z^T M). The
chunk tasks read their block from the store on the worker, like `worker.svd.tasks`, so the
route runs on every executor; the in-memory route calls the same kernels on array slices.
Omega is never stored: each block generates its rows from (seed, group, column).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from worker.svd.backend import Products, RowBlock
from worker.svd.tasks import BlockTask, read_block

# Omega's rows are generated in units of this many columns, so the test matrix of a column is
# the same whatever the block boundaries (and so is the basis).
OMEGA_UNIT = 8192


def _group_key(group: str) -> int:
    # A stable integer per group (Python's hash() is salted per process).
    return int.from_bytes(hashlib.sha256(group.encode()).digest()[:8], "little")


def gaussian_rows(seed: int, group: str, start: int, stop: int, width: int) -> np.ndarray:
    """Rows [start, stop) of the group's test matrix Omega (D, width), float64.

    Column j of unit u (OMEGA_UNIT rows) comes from its own generator seeded by
    (seed, group, u, j): any block can make its rows, and the first columns do not depend on
    width, so bases of different ranks share them.
    """
    out = np.empty((stop - start, width))
    gk = _group_key(group)
    for u in range(start // OMEGA_UNIT, (stop - 1) // OMEGA_UNIT + 1 if stop > start else 0):
        a, b = max(start, u * OMEGA_UNIT), min(stop, (u + 1) * OMEGA_UNIT)
        lo, hi = a - u * OMEGA_UNIT, b - u * OMEGA_UNIT
        for j in range(width):
            rng = np.random.default_rng([seed, gk, u, j])
            out[a - start : b - start, j] = rng.standard_normal(hi, dtype=np.float32)[lo:]
    return out


@dataclass
class SketchPart:
    """Pass-1 result of some column blocks; parts add up to the whole group's."""

    y: np.ndarray  # (n, l) Z Omega
    sq_norms: np.ndarray  # (n,) squared row norms of Z
    gram_e: np.ndarray  # (n, r) Z Z^T e_j per row-weight vector e_j

    def __add__(self, other: SketchPart) -> SketchPart:
        return SketchPart(
            self.y + other.y, self.sq_norms + other.sq_norms, self.gram_e + other.gram_e
        )


@dataclass
class PowerPart:
    """A power-iteration (and, in the last one, Rayleigh-Ritz) result of some column blocks."""

    z: np.ndarray  # (n, L) X X^T M
    c: np.ndarray | None  # (L, L) M^T X X^T M, only in the Rayleigh-Ritz pass

    def __add__(self, other: PowerPart) -> PowerPart:
        c = None if self.c is None else self.c + other.c
        return PowerPart(self.z + other.z, c)


def sketch_part(
    rows: RowBlock,
    *,
    group: str,
    start: int,
    seed: int,
    width: int,
    e: np.ndarray,
    device: str | None = None,
) -> SketchPart:
    """SketchPart of a block whose first column is column `start` of the group."""
    x, refs, append = rows
    y, sq, ge = Products(device).sketch(
        x, lambda a, b: gaussian_rows(seed, group, start + a, start + b, width), e, refs, append
    )
    return SketchPart(y, sq, ge)


def power_part(
    rows: RowBlock, m: np.ndarray, *, rayleigh: bool, device: str | None = None
) -> PowerPart:
    x, refs, append = rows
    z, c = Products(device).power(x, m, refs, append, rayleigh=rayleigh)
    return PowerPart(z, c)


# --------------------------------------------------------------------------- chunk tasks
@dataclass(frozen=True)
class SketchTask:
    block: BlockTask
    seed: int
    width: int
    e: np.ndarray  # (n, r) row weights for the energies of centred bases


@dataclass(frozen=True)
class PowerTask:
    block: BlockTask
    m: np.ndarray  # (n, L) the bases' T^T Q side by side
    rayleigh: bool


def sketch_block(task: SketchTask) -> SketchPart:
    """Pass 1 on a worker: read the block from its store, sketch it."""
    b = task.block
    return sketch_part(
        read_block(b),
        group=b.group,
        start=b.start,
        seed=task.seed,
        width=task.width,
        e=task.e,
        device=b.device,
    )


def power_block(task: PowerTask) -> PowerPart:
    """A power iteration (or the Rayleigh-Ritz pass) on a worker."""
    return power_part(
        read_block(task.block), task.m, rayleigh=task.rayleigh, device=task.block.device
    )
