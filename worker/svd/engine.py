"""Bases from trajectory stores: two passes over the data, whatever the number of bases.

Pass 1 computes, per layer group, the float64 Gram of *all* rows that any requested basis uses
(the rows of several tasks for unified and zero-shot bases). Every basis is then a small
eigenproblem on a sub-block of that Gram (zero-shot = the unified rows minus one task's), and
the global basis uses the sum of the layer Grams. Pass 2 reads each column block once and
writes V for every basis from one product X_c^T [M_1 | M_2 | ...]. N+1 bases over N tasks cost
two passes, not 2(N+1).

method=RandomizedMethod(...) replaces pass 1 by the sketch, power and Rayleigh-Ritz passes of
`worker.svd.randomized` (q + 2 passes, shared by all bases in the same way); pass 2 is the
same projection. Use it for long trajectories (n in the thousands) and k << n.

The work is four stages, each a module of its own and testable alone: `plan` (check the
request, the union of rows, the blocks), `solve` (pass 1 and the small solves), `project`
(pass 2: write V) and `commit` (hashes and manifests; debris removed on failure).

Memory: on the driver, one n x n float64 Gram per group (or n x l sketches); on a worker, one
column block (n x block_cols float32) plus a float64 sub-block. Workers write V blocks aligned
with the store's chunks, so no two writers share a chunk of the basis.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from storage.basis import BasisStore
from storage.vocabulary import BasisMode, BasisScope
from worker.executors import Executor, LocalExecutor
from worker.svd.commit import commit, discard_on_failure, inputs_digest
from worker.svd.method import GramMethod, Method, RandomizedMethod, method_from_name
from worker.svd.phases import Phases, Progress
from worker.svd.plan import BasisRequest, Plan, make_plan
from worker.svd.project import create_writers, project
from worker.svd.solve import Solves, solve
from worker.svd.sources import make_sources, select_rows
from worker.svd.tasks import SourceRows

__all__ = [
    "BasisRequest",
    "ComputeReport",
    "GramMethod",
    "Method",
    "RandomizedMethod",
    "compute_bases",
    "inputs_digest",
    "make_sources",  # re-exported: callers build sources and bases from one module
    "method_from_name",
    "select_rows",
]

DEFAULT_BLOCK_COLS = 1 << 16


@dataclass
class ComputeReport:
    """What a computation produced and cost: the committed bases, seconds per phase, the rows
    of the union and the bytes read over all passes (for benchmarks and the CLI)."""

    bases: list[BasisStore]
    seconds: dict[str, float]
    rows: int
    bytes_read: int


def compute_bases(
    sources: Sequence[SourceRows],
    requests: Sequence[BasisRequest],
    *,
    mode: BasisMode | str = BasisMode.DELTA,
    scope: BasisScope | str = BasisScope.LAYER,
    groups: Sequence[str] | None = None,
    executor: Executor | None = None,
    block_cols: int = DEFAULT_BLOCK_COLS,
    rcond: float | None = None,
    device: str | None = None,
    progress: Progress | None = None,
    overwrite: bool = False,
    method: Method = GramMethod(),
) -> ComputeReport:
    """Compute every requested basis with two passes over the sources' column blocks
    (GramMethod(), exact) or q + 3 passes (RandomizedMethod(oversample, power_iters, seed)).

    progress(phase, done, total) is called as blocks finish (phases: gram, or sketch,
    power i, rayleigh; then project, hash). Bad input raises before anything is written.
    """
    plan = make_plan(
        sources,
        requests,
        mode=mode,
        scope=scope,
        method=method,
        groups=groups,
        rcond=rcond,
        overwrite=overwrite,
        block_cols=block_cols,
        device=device,
    )
    own = executor is None
    executor = executor or LocalExecutor()
    phases = Phases(progress)
    try:
        solves = solve(plan, executor, phases)
        bases = _write(plan, solves, executor, phases, overwrite)
    finally:
        if own:
            executor.close()
    return ComputeReport(
        bases=bases, seconds=phases.seconds, rows=plan.n, bytes_read=plan.bytes_read
    )


def _write(
    plan: Plan, solves: Solves, executor: Executor, phases: Phases, overwrite: bool
) -> list[BasisStore]:
    """Pass 2 and the commit, with every uncommitted basis removed if either fails."""
    writers = create_writers(plan, solves, overwrite)
    with discard_on_failure(writers):
        project(plan, solves, writers, executor, phases)
        return commit(plan, solves, writers, executor, phases)
