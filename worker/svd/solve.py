"""Stage 2 of a basis computation: pass 1 over the data and the small (t x t) solves.

The Gram route sums each group's float64 Gram of the union of rows over its column blocks, then
solves every basis as a sub-block of it (the global basis from the sum of the layer Grams). The
randomized route runs the sketch, power and Rayleigh-Ritz passes of `worker.svd.randomized`,
shared by all bases the same way. Either way the result is, per basis and per group, the
`SmallSolve` whose m gives V = X^T m in pass 2; nothing D-sized stays on the driver.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

import numpy as np

from storage.vocabulary import BasisScope
from worker.executors import Executor
from worker.svd.gram import SmallSolve, solve_gram
from worker.svd.method import RandomizedMethod
from worker.svd.phases import Phases
from worker.svd.plan import BasisRequest, Plan
from worker.svd.randomized import Target, randomized_on_executor
from worker.svd.tasks import BlockTask, gram_block

Solves = list[dict[str, SmallSolve]]  # per request (in order), per layer group


def solve(plan: Plan, executor: Executor, phases: Phases) -> Solves:
    """Pass 1 by the plan's method, then every basis' small solve; one SmallSolve per request
    and group. Phases: gram (timed as gram and eigh), or sketch, power i, rayleigh (timed
    together as randomized)."""
    if isinstance(plan.method, RandomizedMethod):
        return _solve_randomized(plan, plan.method, executor, phases)
    with phases.timed("gram"):
        grams = executor.map_reduce(
            gram_block,
            plan.blocks,
            key=_group_of,
            progress=phases.tick("gram", len(plan.blocks)),
        )
    with phases.timed("eigh"):
        return solve_grams(plan, grams)


def _group_of(block: BlockTask) -> str:
    return block.group


def solve_grams(plan: Plan, grams: Mapping[str, np.ndarray]) -> Solves:
    """The small solves of the Gram route from each group's Gram of the union of rows."""
    if plan.scope != BasisScope.GLOBAL:
        return [{g: _solve_one(plan, grams[g], req) for g in plan.groups} for req in plan.requests]
    # The whole-encoder Gram is the sum of the layer Grams: W_global = [W_0 | W_1 | ...].
    # A plan has at least one group, so the sum is an array, never sum()'s start value 0.
    g_all = cast(np.ndarray, sum(grams[g] for g in plan.groups))
    out = []
    for req in plan.requests:
        sol = _solve_one(plan, g_all, req)
        # Each layer holds its slice of the global V (V_layer = X_layer^T m); the spectrum and
        # energy recorded with every layer are the global ones.
        out.append({g: _as_requested(sol, req.rank) for g in plan.groups})
    return out


def _solve_one(plan: Plan, gram: np.ndarray, req: BasisRequest) -> SmallSolve:
    members = None if req.members is None else np.asarray(req.members)
    return solve_gram(
        gram, req.rank, mode=plan.mode, members=members, rcond=plan.rcond, augmented=plan.augmented
    )


def _as_requested(sol: SmallSolve, k: int) -> SmallSolve:
    """A copy of a global solve recording the rank that was asked for."""
    return SmallSolve(
        m=sol.m,
        singular_values=sol.singular_values,
        energy=sol.energy,
        total_energy=sol.total_energy,
        requested_rank=k,
        extent=sol.extent,
    )


def _solve_randomized(
    plan: Plan, method: RandomizedMethod, executor: Executor, phases: Phases
) -> Solves:
    """Pass 1 by randomized SVD: blocks are summed per reduction key (each group, or one key
    for a global basis), and every group of a global basis takes the global solve."""
    with phases.timed("randomized"):
        per_key = randomized_on_executor(
            executor,
            plan.blocks,
            lambda b: plan.reduction_key(b.group),
            plan.n,
            [Target(req.rank, req.members) for req in plan.requests],
            mode=plan.mode,
            params=method.sketch,
            rcond=plan.rcond,
            augmented=plan.augmented,
            progress=phases.tick,
        )
        return [
            {g: per_key[plan.reduction_key(g)][r] for g in plan.groups}
            for r in range(len(plan.requests))
        ]
