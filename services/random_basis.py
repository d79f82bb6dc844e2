"""The random baseline: a seeded random orthonormal basis with the shapes of a real one.

For each layer, A (D x k) has i.i.d. N(0, 1) entries generated block by block: the rows of block
c come from `SeedSequence([seed, crc32(layer), c])`, so any block can be regenerated without the
others and the basis depends only on (seed, layer name, D, k). Q is the orthonormal factor of
A = Q R with R's diagonal positive, computed by CholeskyQR2 (Yamamoto et al. 2015): two rounds
of G = sum_c A_c^T A_c (k x k, float64), R = chol(G), so Q is orthonormal to float64 rounding even
when D is close to k. Memory: O(block * k + k^2); the bytes go through `BasisWriter`, which
checksums every layer. A Gaussian matrix's Q is Haar-distributed on the Stiefel manifold, the
random subspace of Aghajanyan et al. (2021).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping

import numpy as np

from storage.basis import BasisStore, BasisWriter
from storage.errors import InvalidInput, storage_error
from storage.objects import Location, zarr_store


def block_rows(k: int) -> int:
    """Rows per generated block: about 2 Mi values, a power of two in [64, 65536].
    Fixed by k alone, so the same (seed, layer, D, k) always gives the same blocks."""
    rows = 1 << max(6, min(16, ((1 << 21) // max(1, k)).bit_length() - 1))
    return rows


def _gaussian(seed: int, layer: str, c: int, rows: int, k: int) -> np.ndarray:
    ss = np.random.SeedSequence([seed, zlib.crc32(layer.encode()), c])
    return np.random.default_rng(ss).standard_normal((rows, k))  # (rows, k) float64


def _blocks(d: int, step: int) -> list[tuple[int, int]]:
    return [(a, min(a + step, d)) for a in range(0, d, step)]


def steps(d: int, k: int) -> int:
    """How many times `random_orthonormal` calls `tick`: 3 passes over the blocks."""
    return 3 * len(_blocks(d, block_rows(k)))


def random_orthonormal(
    d: int,
    k: int,
    seed: int,
    layer: str,
    write: Callable[[int, int, np.ndarray], None],
    tick: Callable[[], None] | None = None,
) -> None:
    """Stream Q (d, k) float32 to write(start, stop, block) in row order. `tick()` runs after
    each block of each pass (about 2 Mi values): where a job checks cancel, stop and lease."""
    if not 1 <= k <= d:
        raise InvalidInput(f"a random basis of rank {k} needs 1 <= k <= D = {d}")
    step = block_rows(k)
    blocks = _blocks(d, step)
    tick = tick or (lambda: None)

    def gram(r_inv: np.ndarray | None) -> np.ndarray:
        g = np.zeros((k, k))
        for c, (a, b) in enumerate(blocks):
            x = _gaussian(seed, layer, c, b - a, k)
            if r_inv is not None:
                x = x @ r_inv
            g += x.T @ x
            tick()
        return g

    # R1 from A, R2 from Q1 = A R1^-1; then Q = A (R2 R1)^-1 with R2 R1 upper triangular.
    r1 = np.linalg.cholesky(gram(None)).T  # (k, k) upper
    r1_inv = np.linalg.inv(r1)
    r2 = np.linalg.cholesky(gram(r1_inv)).T
    r_inv = r1_inv @ np.linalg.inv(r2)
    for c, (a, b) in enumerate(blocks):
        write(a, b, (_gaussian(seed, layer, c, b - a, k) @ r_inv).astype(np.float32))
        tick()


def random_basis(
    out_url: str,
    shapes: Mapping[str, int],
    k: int,
    seed: int,
    *,
    meta: dict | None = None,
    storage_options: dict | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    overwrite: bool = True,
) -> BasisStore:
    """Write a random orthonormal basis, one (D_g, k) layer per group, and commit it."""
    import zarr

    for name, d in shapes.items():
        if not 1 <= k <= d:
            raise InvalidInput(f"rank {k} exceeds layer {name!r} of size {d}; use k <= {d}")
    writer = BasisWriter.create(
        out_url,
        {name: (d, k) for name, d in shapes.items()},
        chunk_rows=block_rows(k),
        storage_options=storage_options,
        overwrite=overwrite,
    )
    layers = {
        # Q's own singular values are all 1; a random basis captures no measured energy.
        name: {"singular_values": [1.0] * k, "energy": [], "total_energy": 0.0}
        for name in shapes
    }
    full_meta = {"kind": "random", "seed": seed, "requested_rank": k, **(meta or {})}
    try:
        loc = Location.from_url(writer.url, storage_options)
        root = zarr.open_group(zarr_store(loc), mode="r+")
        total = sum(steps(d, k) for d in shapes.values())
        done = 0

        def tick() -> None:
            nonlocal done
            done += 1
            if progress:
                progress("random", done, total)

        for name, d in shapes.items():
            arr = root[name]

            def write(a: int, b: int, block: np.ndarray, arr=arr) -> None:
                arr[a:b, :] = block

            random_orthonormal(d, k, seed, name, write, tick)
        return writer.commit(layers, full_meta)
    except OSError as exc:
        writer.discard()
        raise storage_error(f"writing the random basis at {writer.url} failed", exc) from exc
    except BaseException:
        writer.discard()  # nothing half-written lingers (no manifest: never served anyway)
        raise
