"""A run of the experiment as a `Job` (stable id, phase, RunSpec, the files later phases read),
and `Paths`, where the experiment keeps its large intermediate data."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker.finetune.runner import RunSpec


@dataclass(frozen=True)
class Paths:
    """Where the experiment keeps its large intermediate data (never committed)."""

    work: Path

    def trajectory(self, task: str) -> Path:
        return self.work / "trajectories" / task

    def task_basis(self, task: str, mode: str = "delta") -> Path:
        return self.work / "bases" / task / mode

    def global_basis(self, task: str) -> Path:
        return self.work / "bases" / task / "global"

    def multitask(self) -> Path:
        return self.work / "bases" / "multitask"

    def unified(self) -> Path:
        return self.multitask() / "unified"

    def zeroshot(self, task: str) -> Path:
        return self.multitask() / f"zeroshot-{task}"

    def run(self, run_id: str) -> Path:
        return self.work / "runs" / run_id.replace("/", "__")


@dataclass
class Job:
    id: str
    phase: str
    spec: RunSpec
    # Fields copied into the ledger record beside the run's own (basis label, mode, ...).
    meta: dict[str, Any] = field(default_factory=dict)
    # Files of this run that later phases read (under work/, which is not committed): a
    # committed run whose products are gone, as in a fresh clone, is run again.
    products: tuple[str, ...] = ()

    def missing_products(self) -> list[str]:
        return [p for p in self.products if not os.path.exists(p)]


def with_phase(job: Job, phase: str) -> Job:
    return dataclasses.replace(job, phase=phase)
