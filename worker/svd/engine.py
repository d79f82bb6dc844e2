"""Bases from trajectory stores: two passes over the data, whatever the number of bases.

Pass 1 computes, per layer group, the float64 Gram of *all* rows that any requested basis uses
(the rows of several tasks for unified and zero-shot bases). Every basis is then a small
eigenproblem on a sub-block of that Gram (zero-shot = the unified rows minus one task's), and
the global basis uses the sum of the layer Grams. Pass 2 reads each column block once and
writes V for every basis from one product X_c^T [M_1 | M_2 | ...]. N+1 bases over N tasks cost
two passes, not 2(N+1).

method="randomized" replaces pass 1 by the sketch, power and Rayleigh-Ritz passes of
`worker.svd.randomized` (q + 2 passes, shared by all bases in the same way); pass 2 is the
same projection. Use it for long trajectories (n in the thousands) and k << n.

Memory: on the driver, one n x n float64 Gram per group (or n x l sketches); on a worker, one
column block (n x block_cols float32) plus a float64 sub-block. Workers write V blocks aligned
with the store's chunks, so no two writers share a chunk of the basis.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from storage.basis import BasisStore, BasisWriter
from storage.errors import Conflict, InvalidInput
from storage.trajectory import TrajectoryStore
from worker.executors import Executor, LocalExecutor
from worker.svd.gram import SmallSolve, check_mode, resolve_rcond, solve_gram
from worker.svd.randomized import SketchParams, Target, randomized_on_executor
from worker.svd.sources import make_sources, select_rows
from worker.svd.tasks import (
    BlockTask,
    HashTask,
    Output,
    ProjectTask,
    SourceRows,
    gram_block,
    hash_layer,
    project_block,
)

log = logging.getLogger(__name__)

__all__ = [
    "BasisRequest",
    "ComputeReport",
    "compute_bases",
    "inputs_digest",
    "make_sources",  # re-exported: callers build sources and bases from one module
    "select_rows",
]

SCOPES = ("layer", "global")
METHODS = ("gram", "randomized")
GLOBAL_KEY = "global"  # the reduction key of a global basis: every layer's blocks sum into it
DEFAULT_BLOCK_COLS = 1 << 16


@dataclass
class BasisRequest:
    """One basis to produce: which of the computation's rows it spans, its rank, where it goes."""

    out_url: str
    k: int
    members: Sequence[int] | None = None  # indices into the concatenated rows; None = all
    kind: str = "task"
    meta: dict[str, Any] = field(default_factory=dict)
    storage_options: dict | None = None


@dataclass
class ComputeReport:
    bases: list[BasisStore]
    seconds: dict[str, float]
    rows: int
    bytes_read: int


def compute_bases(
    sources: Sequence[SourceRows],
    requests: Sequence[BasisRequest],
    *,
    mode: str = "delta",
    scope: str = "layer",
    groups: Sequence[str] | None = None,
    executor: Executor | None = None,
    block_cols: int = DEFAULT_BLOCK_COLS,
    rcond: float | None = None,
    device: str | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    overwrite: bool = False,
    method: str = "gram",
    oversample: int = 10,
    power_iters: int = 2,
    seed: int = 0,
) -> ComputeReport:
    """Compute every requested basis with two passes over the sources' column blocks
    (method="gram", exact) or q + 3 passes (method="randomized": oversample, power_iters
    and seed as in `worker.svd.randomized.SketchParams`).

    progress(phase, done, total) is called as blocks finish (phases: gram, or sketch,
    power i, rayleigh; then project, hash). Bad input raises before anything is written.
    """
    check_mode(mode)
    if scope not in SCOPES:
        raise InvalidInput(f"scope {scope!r} is not one of {list(SCOPES)}")
    if method not in METHODS:
        raise InvalidInput(f"method {method!r} is not one of {list(METHODS)}")
    params = SketchParams(oversample, power_iters, seed) if method == "randomized" else None
    # Resolved here so the manifest records the cut that was applied.
    rcond = resolve_rcond(mode, rcond, factored=params is None)
    if not sources or not requests:
        raise InvalidInput("nothing to compute: no sources or no bases requested")
    _check_outputs(requests, overwrite)
    store0 = TrajectoryStore.open(sources[0].url, storage_options=sources[0].storage_options)
    layout = store0.layout
    group_names = list(groups) if groups else layout.group_names
    for g in group_names:
        layout.group(g)
    n = sum(len(s.rows) for s in sources)
    for req in requests:
        members = range(n) if req.members is None else req.members
        if req.k < 1 or req.k > len(members):
            raise InvalidInput(
                f"basis {req.kind!r} spans {len(members)} rows but rank {req.k} "
                f"was asked for; use 1 <= k <= {len(members)}"
            )
    own = executor is None
    executor = executor or LocalExecutor()
    timings: dict[str, float] = {}
    try:
        blocks = [
            BlockTask(tuple(sources), g, a, b, device, augment=mode == "raw")
            for g in group_names
            for a, b in store0.column_ranges(g, block_cols)
        ]

        def tick(phase, total):
            done = [0]

            def cb(k):
                done[0] += k
                if progress:
                    progress(phase, done[0], total)

            return cb

        if params is None:
            t0 = time.perf_counter()
            grams = executor.map_reduce(
                gram_block, blocks, key=lambda b: b.group, progress=tick("gram", len(blocks))
            )
            timings["gram"] = time.perf_counter() - t0

            t0 = time.perf_counter()
            solves = _solve_all(grams, group_names, requests, mode, scope, rcond, mode == "raw")
            timings["eigh"] = time.perf_counter() - t0
        else:
            t0 = time.perf_counter()
            per_key = randomized_on_executor(
                executor,
                blocks,
                (lambda b: GLOBAL_KEY) if scope == "global" else (lambda b: b.group),
                n,
                [Target(req.k, req.members) for req in requests],
                mode=mode,
                params=params,
                rcond=rcond,
                augmented=mode == "raw",
                progress=tick,
            )
            solves = [
                {g: per_key[GLOBAL_KEY if scope == "global" else g][r] for g in group_names}
                for r in range(len(requests))
            ]
            timings["randomized"] = time.perf_counter() - t0

        writers: list[BasisWriter] = []
        try:
            for req, per_group in zip(requests, solves, strict=True):
                shapes = {g: (layout.group(g).size, per_group[g].rank) for g in group_names}
                writers.append(
                    BasisWriter.create(
                        req.out_url,
                        shapes,
                        chunk_rows=store0.chunk_cols,
                        storage_options=req.storage_options,
                        overwrite=overwrite,
                    )
                )

            t0 = time.perf_counter()
            tasks = []
            for blk in blocks:
                ms, outs, col = [], [], 0
                for req, per_group, w in zip(requests, solves, writers, strict=True):
                    sol = per_group[blk.group]
                    ms.append(sol.m)
                    outs.append(
                        Output(
                            w.url,
                            col,
                            sol.rank,
                            json.dumps(req.storage_options or {}, sort_keys=True),
                        )
                    )
                    col += sol.rank
                tasks.append(ProjectTask(blk, np.concatenate(ms, axis=1), tuple(outs)))
            executor.map(project_block, tasks, progress=tick("project", len(tasks)))
            timings["project"] = time.perf_counter() - t0

            t0 = time.perf_counter()
            hash_tasks = [
                HashTask(
                    w.url,
                    g,
                    store0.chunk_cols,
                    json.dumps(req.storage_options or {}, sort_keys=True),
                )
                for req, w in zip(requests, writers, strict=True)
                for g in group_names
            ]
            shas = executor.map(hash_layer, hash_tasks, progress=tick("hash", len(hash_tasks)))
            sha_of = {(h.url, h.group): s for h, s in zip(hash_tasks, shas, strict=True)}
            timings["hash"] = time.perf_counter() - t0

            bases = []
            for req, per_group, w in zip(requests, solves, writers, strict=True):
                layers = {
                    g: {
                        "singular_values": per_group[g].singular_values.tolist(),
                        "energy": per_group[g].energy.tolist(),
                        "total_energy": per_group[g].total_energy,
                        "sha256": sha_of[(w.url, g)],
                        **_extent(per_group[g]),
                    }
                    for g in group_names
                }
                meta = {
                    "kind": req.kind,
                    "mode": mode,
                    "scope": scope,
                    "requested_rank": req.k,
                    "rcond": rcond,
                    "method": method,
                    "method_params": params.to_dict() if params else {},
                    "layout": layout.to_dict(),
                    "model_name": store0.model_name,
                    "revision": store0.revision,
                    "sources": [_source_meta(s) for s in sources],
                    "members": list(req.members) if req.members is not None else None,
                    "inputs_digest": inputs_digest(sources, req.members, mode, scope),
                    **req.meta,
                }
                bases.append(w.commit(layers, meta))
        except BaseException:
            # No manifest was written for these (commit is last), so nothing would ever serve
            # them; remove the arrays so nothing half-written lingers (best effort: the storage
            # that just failed may fail again).
            for w in writers:
                w.discard()
            raise
        # Rows read per pass: the selected rows plus theta0 where it is subtracted.
        rows_read = sum(len(set(s.rows) | ({s.ref_row} - {None})) for s in sources)
        passes = 2 if params is None else params.power_iters + 3
        return ComputeReport(
            bases=bases,
            seconds=timings,
            rows=n,
            bytes_read=passes * 4 * rows_read * sum(layout.group(g).size for g in group_names),
        )
    finally:
        if own:
            executor.close()


def _extent(solve: SmallSolve) -> dict:
    """The trajectory's extent along each direction (theta's scale under the default training
    rule), where the kernel could measure it."""
    return {} if solve.extent is None else {"extent": solve.extent.tolist()}


def _solve_all(
    grams: dict,
    group_names: list[str],
    requests: Sequence[BasisRequest],
    mode: str,
    scope: str,
    rcond: float,
    augmented: bool,
) -> list[dict[str, SmallSolve]]:
    out = []
    if scope == "global":
        # The whole-encoder Gram is the sum of the layer Grams: W_global = [W_0 | W_1 | ...].
        g_all = sum(grams[g] for g in group_names)
    for req in requests:
        members = None if req.members is None else np.asarray(req.members)
        if scope == "global":
            sol = solve_gram(
                g_all, req.k, mode=mode, members=members, rcond=rcond, augmented=augmented
            )
            per = {}
            for g in group_names:
                # Each layer holds its slice of the global V (V_layer = X_layer^T m); the
                # spectrum and energy recorded with every layer are the global ones.
                per[g] = SmallSolve(
                    m=sol.m,
                    singular_values=sol.singular_values,
                    energy=sol.energy,
                    total_energy=sol.total_energy,
                    requested_rank=req.k,
                    extent=sol.extent,
                )
            out.append(per)
        else:
            out.append(
                {
                    g: solve_gram(
                        grams[g],
                        req.k,
                        mode=mode,
                        members=members,
                        rcond=rcond,
                        augmented=augmented,
                    )
                    for g in group_names
                }
            )
    return out


def _check_outputs(requests: Sequence[BasisRequest], overwrite: bool) -> None:
    """Refuse before any work (and so before anything is written) when two bases would go to
    one place or a finished basis would be replaced without overwrite=True."""
    seen = set()
    for req in requests:
        if req.out_url in seen:
            raise InvalidInput(f"two bases would be written to {req.out_url}")
        seen.add(req.out_url)
        if not overwrite and BasisStore.exists(req.out_url, req.storage_options):
            raise Conflict(
                f"a finished basis already exists at {req.out_url}; pass overwrite=True "
                "to replace it"
            )


def _source_meta(s: SourceRows) -> dict:
    return {"url": s.url, "label": s.label, "rows": list(s.rows), "ref_row": s.ref_row}


def inputs_digest(sources: Sequence[SourceRows], members, mode: str, scope: str) -> str:
    """Identity of a basis' inputs: store rows (by their committed sha256) and parameters.
    A basis is stale when the digest of its inputs today differs from the one it recorded."""
    import hashlib

    h = hashlib.sha256()
    h.update(
        json.dumps(
            {
                "mode": mode,
                "scope": scope,
                "members": list(members) if members is not None else None,
            }
        ).encode()
    )
    for s in sources:
        store = TrajectoryStore.open(s.url, storage_options=s.storage_options)
        rows = store.rows
        for r in sorted(set(s.rows) | ({s.ref_row} if s.ref_row is not None else set())):
            h.update(json.dumps([s.label, r, rows[r].sha256], sort_keys=True).encode())
    return h.hexdigest()
