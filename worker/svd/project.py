"""Stage 3 of a basis computation: create the bases' arrays and write V (pass 2).

Each column block is read once and multiplied by every basis' m side by side,
X_c^T [m_1 | m_2 | ...]; the columns of the product go to the bases' arrays. Blocks follow the
store's chunks, so no two workers write one chunk of a basis.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from storage.basis import BasisWriter
from worker.executors import Executor
from worker.svd.phases import Phases
from worker.svd.plan import Plan
from worker.svd.solve import Solves
from worker.svd.tasks import Output, ProjectTask, project_block


def options_json(storage_options: dict[str, Any] | None) -> str:
    """Storage options as the picklable, hashable string tasks carry."""
    return json.dumps(storage_options or {}, sort_keys=True)


def create_writers(plan: Plan, solves: Solves, overwrite: bool) -> list[BasisWriter]:
    """One uncommitted basis per request, with each group's (D_group, rank) array. If one
    cannot be created, those already created are removed before the error goes on."""
    writers: list[BasisWriter] = []
    try:
        for req, per_group in zip(plan.requests, solves, strict=True):
            shapes = {g: (plan.layout.group(g).size, per_group[g].rank) for g in plan.groups}
            writers.append(
                BasisWriter.create(
                    req.out_url,
                    shapes,
                    chunk_rows=plan.store.chunk_cols,
                    storage_options=req.storage_options,
                    overwrite=overwrite,
                )
            )
    except BaseException:
        for w in writers:
            w.discard()
        raise
    return writers


def project_tasks(plan: Plan, solves: Solves, writers: Sequence[BasisWriter]) -> list[ProjectTask]:
    """Pass 2's tasks: per block, every basis' m side by side and where its columns go."""
    tasks = []
    for blk in plan.blocks:
        ms, outs, col = [], [], 0
        for req, per_group, w in zip(plan.requests, solves, writers, strict=True):
            sol = per_group[blk.group]
            ms.append(sol.m)
            outs.append(Output(w.url, col, sol.rank, options_json(req.storage_options)))
            col += sol.rank
        tasks.append(ProjectTask(blk, np.concatenate(ms, axis=1), tuple(outs)))
    return tasks


def project(
    plan: Plan,
    solves: Solves,
    writers: Sequence[BasisWriter],
    executor: Executor,
    phases: Phases,
) -> None:
    """Pass 2: write V = X^T m of every basis into its arrays (phase and timing: project)."""
    with phases.timed("project"):
        tasks = project_tasks(plan, solves, writers)
        executor.map(project_block, tasks, progress=phases.tick("project", len(tasks)))
