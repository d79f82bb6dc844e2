"""The registry's random baseline: a seeded random orthonormal basis with a layout's shapes.

The bases come from worker.svd.random_basis, the project's one generator, so a random basis the
registry serves has the bytes of the fine-tuning worker's `--method random` basis for the same
seed, layout and rank (the same sha256 per layer). A layer is identified by its index in the
layout order (the order of `shapes`, `Layout.groups` in a job); its Gaussian comes from
`SeedSequence([seed, index])` and is orthonormalized by Cholesky QR in float64 (the kernels'
docstring has the details). The layers are generated and written block by block (`block_rows`
rows: about 2 Mi values), memory O(block * k + k^2); the bytes go through `BasisWriter`, which
checksums every layer. A Gaussian matrix's Q is Haar-distributed on the Stiefel manifold, the
random subspace of Aghajanyan et al. (2021).

Before the shared generator, registry random bases were drawn with numpy from
`SeedSequence([seed, crc32(layer name), block])` and orthonormalized by CholeskyQR2: versions
computed then hold other bytes than the same order gives now (manifest without `generator`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import zarr

from storage.basis import BasisStore, BasisWriter
from storage.errors import InvalidInput, storage_error
from storage.objects import Location, zarr_store
from storage.vocabulary import BasisKind
from worker.svd.random_basis import GENERATOR, block_rows, random_orthonormal, steps


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
    for name, d in shapes.items():
        if not 1 <= k <= d:
            raise InvalidInput(f"rank {k} exceeds layer {name!r} of size {d}; use k <= {d}")
    step = block_rows(k)
    writer = BasisWriter.create(
        out_url,
        {name: (d, k) for name, d in shapes.items()},
        chunk_rows=step,
        storage_options=storage_options,
        overwrite=overwrite,
    )
    layers = {
        # Q's own singular values are all 1; a random basis captures no measured energy.
        name: {"singular_values": [1.0] * k, "energy": [], "total_energy": 0.0}
        for name in shapes
    }
    full_meta = {
        "kind": BasisKind.RANDOM,
        "seed": seed,
        "requested_rank": k,
        "generator": GENERATOR,
        **(meta or {}),
    }
    try:
        loc = Location.from_url(writer.url, storage_options)
        root = zarr.open_group(zarr_store(loc), mode="r+")
        arrays = {name: root[name] for name in shapes}
        total = steps(shapes, k, step)
        done = 0

        def tick() -> None:
            nonlocal done
            done += 1
            if progress:
                progress("random", done, total)

        def write(name: str, a: int, b: int, block: np.ndarray) -> None:
            arrays[name][a:b, :] = block

        random_orthonormal(shapes, k, seed, write=write, tick=tick, rows_per_block=step)
        return writer.commit(layers, full_meta)
    except OSError as exc:
        writer.discard()
        raise storage_error(f"writing the random basis at {writer.url} failed", exc) from exc
    except BaseException:
        writer.discard()  # nothing half-written lingers (no manifest: never served anyway)
        raise
