"""Which runs each part of the paper needs, as `Job`s with stable ids.

A job id names everything that decides its number (method, task, basis, mode, dim, seed), so
two tables that need the same run share it (intrinsic at dim 16 is in Table 5, the modes
comparison and the d90 search) and the ledger trains it once.

Ids: ``{method}/{task}/{variant}/d{dim}/s{seed}``, e.g. ``intrinsic/trec6/delta/d32/s1``,
``transfer/trec6/from-sms_spam/d32/s0``, ``full/trec6/disable-outlier/d0/s2``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from experiments.config import DISABLE_MODES, PaperConfig
from experiments.tune import SEARCHES
from storage.errors import InvalidInput
from storage.trajectory import MANIFEST as TRAJECTORY_MANIFEST
from worker.finetune.config import SubspaceConfig
from worker.finetune.runner import RunSpec
from worker.finetune.train import TrainConfig

# The split is fixed by split_seed; 15% dev leaves at least 500 dev examples for every task.
# The tuning split (cfg.tune_fraction) is carved after dev: dev is the same with or without it.
DEV_FRACTION = 0.15
MODES = ("raw", "delta", "centered")


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


class Planner:
    """Jobs of every phase. lrs: the learning rates phase tune chose (experiments.tune), for
    the settings the config leaves open (None); a fixed config value wins."""

    def __init__(
        self, cfg: PaperConfig, paths: Paths, lrs: Mapping[str, float | None] | None = None
    ) -> None:
        self.cfg = cfg
        self.paths = paths
        self.lrs = dict(lrs or {})

    def provisional(self, name: str) -> float:
        """The setting if fixed or chosen, else the middle value of its grid."""
        value = getattr(self.cfg, name)
        if value is None:
            value = self.lrs.get(name)
        if value is None:
            grid = getattr(self.cfg, f"{name}_grid")
            value = grid[len(grid) // 2]
        return float(value)

    def setting(self, name: str) -> float:
        value = getattr(self.cfg, name)
        if value is None:
            value = self.lrs.get(name)
        if value is None:
            raise InvalidInput(f"{name} is not chosen yet: phase tune chooses it first")
        return float(value)

    # ------------------------------------------------------------------ one run
    def job(
        self,
        phase: str,
        task: str,
        method: str,
        seed: int,
        *,
        dim: int | None = None,
        variant: str = "-",
        basis: Path | None = None,
        basis_task: str | None = None,
        said: bool = False,
        scope: str = "layer",
        record_trajectory: Path | None = None,
        hold_zero_from: Path | None = None,
        hold_zero_mode: str = "outlier",
        theta_lr: float | None = None,
        theta_scale: str = "extent",
        meta: dict[str, Any] | None = None,
        lr: float | None = None,
        head_lr: float | None = None,
        steps: int | None = None,
        eval_split: str = "dev",
        save_model: bool = False,
        curve: bool = False,
        keep_outliers: bool = False,
    ) -> Job:
        """One run as a job: its id (which names everything that decides its number), its
        RunSpec and the files later phases read. Long by nature: it maps the experiment's
        settings onto the worker's RunSpec field by field, in one place, so that every table
        builds its runs the same way."""
        cfg = self.cfg
        label = "fastfood+said" if said else method
        run_id = f"{label}/{task}/{variant}/d{dim or 0}/s{seed}"
        if method in ("random", "fastfood"):
            theta_scale = "none"  # a generated basis has no trajectory to measure
        if theta_lr is None and dim:
            name = "theta_lr" if theta_scale == "extent" else "plain_theta_lr"
            theta_lr = self.setting(name)
        theta_lr = theta_lr or 0.01  # unused by full and freeze
        subspace = SubspaceConfig(
            rank=dim,  # the paper's d is the subspace's rank
            said=said,
            scope=scope,
            basis_seed=seed,
            theta_lr=theta_lr,
            theta_scale=theta_scale,
            # dims are fixed before the trajectory's accurate rank is known: a layer with fewer
            # directions keeps all it has, and the record says so (short_layers)
            allow_short=True,
        )
        train = TrainConfig(
            lr=self.setting("lr") if lr is None else lr,
            head_lr=self.setting("head_lr") if head_lr is None else head_lr,
            batch_size=cfg.batch_size,
            max_steps=steps or cfg.steps,
            max_length=cfg.max_length,
            seed=seed,
            # The first seed's runs keep a learning curve (held-out points on the tuning split).
            eval_every=cfg.eval_every if curve or seed == cfg.seeds[0] else None,
        )
        spec = RunSpec(
            task=task,
            method=method,
            model=cfg.model,
            out=str(self.paths.run(run_id)),
            subspace=subspace,
            train=train,
            basis=str(basis) if basis else None,
            basis_task=basis_task,
            dev_fraction=DEV_FRACTION,
            train_size=cfg.train_size,
            dev_size=cfg.dev_size,
            tune_fraction=cfg.tune_fraction,
            tune_size=cfg.tune_size,
            eval_split=eval_split,
            save_model=save_model,
            record_trajectory=str(record_trajectory) if record_trajectory else None,
            record_every=cfg.record_every,
            hold_zero_from=str(hold_zero_from) if hold_zero_from else None,
            hold_zero_mode=hold_zero_mode,
            sigma=cfg.sigma,
        )
        fields = {
            "variant": variant,
            "said": said,
            "scope": scope,
            "theta_lr": theta_lr if dim else None,
            "theta_scale": theta_scale if dim else None,
            **(meta or {}),
        }
        out = Path(spec.out)
        products = []
        if record_trajectory:
            products.append(str(Path(record_trajectory) / TRAJECTORY_MANIFEST))
        if save_model:
            products.append(str(out / "model" / "config.json"))
        if keep_outliers:  # read by Table 3's hold-zero runs and the outliers analysis
            products.append(str(out / "outliers.npz"))
        return Job(run_id, phase, spec, fields, tuple(products))

    def intrinsic(self, phase: str, task: str, dim: int, seed: int, mode: str = "delta") -> Job:
        return self.job(
            phase,
            task,
            "intrinsic",
            seed,
            dim=dim,
            variant=mode,
            basis=self.paths.task_basis(task, mode),
            meta={"basis_from": task, "mode": mode},
        )

    # ------------------------------------------------------------------ the phases
    def tune(self, name: str, value: float) -> list[Job]:
        """One point of a learning-rate search (experiments.tune) on every task: scored on the
        tuning split, seed tune_seed, with the values chosen before it."""
        cfg = self.cfg
        method = dict(SEARCHES)[name]
        dim = cfg.dim if method in ("intrinsic", "random") else None
        jobs = []
        for task in cfg.tasks:
            # A setting not chosen yet stands at the middle of its grid while the earlier
            # searches run (head_lr is chosen with lr there, lr then with the chosen head_lr).
            kw: dict[str, Any] = {n: self.provisional(n) for n in ("lr", "head_lr")}
            if name in ("lr", "head_lr"):
                kw[name] = value
            if name in ("theta_lr", "plain_theta_lr"):
                kw["theta_lr"] = value
            if method == "intrinsic":
                kw.update(basis=self.paths.task_basis(task), meta={"mode": "delta"})
            jobs.append(
                self.job(
                    "tune",
                    task,
                    method,
                    cfg.tune_seed,
                    dim=dim,
                    variant=f"tune-{name}-{value:g}",
                    eval_split="tune",
                    **kw,
                )
            )
        return jobs

    def trajectories(self) -> list[Job]:
        """Full fine-tuning recording t rows over trajectory_steps, with seed tune_seed (not an
        evaluation seed); the model is kept for the oracle curve."""
        cfg = self.cfg
        return [
            self.job(
                "trajectory",
                task,
                "full",
                cfg.tune_seed,
                variant="trajectory",
                record_trajectory=self.paths.trajectory(task),
                steps=cfg.trajectory_steps,
                save_model=True,
                meta={"trajectory": str(self.paths.trajectory(task))},
            )
            for task in cfg.tasks
        ]

    def table1(self) -> list[Job]:
        cfg, jobs = self.cfg, []
        for task in cfg.tasks:
            for seed in cfg.seeds:
                # full keeps its model: Table 3 zeroes weights in it afterwards
                jobs.append(self.job("table1", task, "full", seed, save_model=True))
                jobs.append(self.job("table1", task, "freeze", seed))
                jobs.append(self.job("table1", task, "random", seed, dim=cfg.dim))
                jobs.append(self.intrinsic("table1", task, cfg.dim, seed))
        return jobs

    def transfer(self) -> list[Job]:
        cfg, jobs = self.cfg, []
        for target in cfg.tasks:
            for source in cfg.tasks:
                if source == target:
                    continue
                for seed in cfg.seeds:
                    jobs.append(
                        self.job(
                            "transfer",
                            target,
                            "transfer",
                            seed,
                            dim=cfg.dim,
                            variant=f"from-{source}",
                            basis=self.paths.task_basis(source),
                            meta={"basis_from": source, "mode": "delta"},
                        )
                    )
        return jobs

    def unified(self) -> list[Job]:
        cfg, jobs = self.cfg, []
        for task in cfg.tasks:
            for seed in cfg.seeds:
                jobs.append(
                    self.job(
                        "unified",
                        task,
                        "unified",
                        seed,
                        dim=cfg.unified_dim,
                        variant=f"per-task-{cfg.unified_per_task}",
                        basis=self.paths.unified(),
                        meta={"basis_from": "all", "mode": "delta"},
                    )
                )
                jobs.append(
                    self.job(
                        "unified",
                        task,
                        "zeroshot",
                        seed,
                        dim=cfg.zeroshot_dim,
                        variant=f"per-task-{cfg.unified_per_task}",
                        basis=self.paths.zeroshot(task),
                        meta={"basis_from": "others", "mode": "delta"},
                    )
                )
        return jobs

    def ablation(self) -> list[Job]:
        cfg = self.cfg
        return [
            self.intrinsic("ablation", task, dim, seed)
            for task in cfg.tasks
            for dim in cfg.ablation_dims
            for seed in cfg.seeds
        ]

    def scope(self, layers: int) -> list[Job]:
        """Global (whole-encoder) basis against layer-wise at equal free parameters."""
        cfg, jobs = self.cfg, []
        for task in cfg.tasks:
            for seed in cfg.seeds:
                jobs.append(
                    self.job(
                        "scope",
                        task,
                        "global",
                        seed,
                        dim=cfg.equal_layer_dim * layers,
                        variant="global",
                        basis=self.paths.global_basis(task),
                        scope="global",
                        meta={"basis_from": task, "mode": "delta"},
                    )
                )
                jobs.append(self.intrinsic("scope", task, cfg.equal_layer_dim, seed))
        return jobs

    def modes(self) -> list[Job]:
        """raw / delta / centered side by side, and the raw-basis runs under the paper's own
        protocol that Table 3 takes its outliers from."""
        cfg = self.cfg
        side_by_side = [
            self.intrinsic("modes", task, cfg.modes_dim, seed, mode)
            for task in cfg.tasks
            for mode in MODES
            for seed in cfg.seeds
        ]
        return side_by_side + [
            self.paper_protocol(task, seed) for task in cfg.tasks for seed in cfg.seeds
        ]

    def paper_protocol(self, task: str, seed: int) -> Job:
        """Intrinsic fine-tuning as the paper ran it: raw checkpoints, plain V theta at the
        paper's lr, dim of Table 1. With a raw basis v_1 is theta0's own direction, so V theta
        inherits theta0's heavy tail (LayerNorm gains): the paper's outliers come from here."""
        cfg = self.cfg
        return self.job(
            "modes",
            task,
            "intrinsic",
            seed,
            dim=cfg.dim,
            variant="raw-paper",
            basis=self.paths.task_basis(task, "raw"),
            theta_lr=cfg.paper_theta_lr,
            theta_scale="none",
            meta={"basis_from": task, "mode": "raw", "rule": "paper"},
            keep_outliers=True,
        )

    def disable(self) -> list[Job]:
        """Table 3: full fine-tuning with the outlier weights of the paper-protocol intrinsic
        run (raw basis, plain V theta; the modes phase trains it) held at zero, and with as many
        random weights held at zero."""
        cfg, jobs = self.cfg, []
        for task in cfg.tasks:
            for seed in cfg.seeds:
                source = self.paper_protocol(task, seed)
                for mode in DISABLE_MODES:
                    jobs.append(
                        self.job(
                            "disable",
                            task,
                            "full",
                            seed,
                            variant=f"disable-{mode}",
                            hold_zero_from=Path(source.spec.out),
                            hold_zero_mode=mode,
                            meta={"disabled_from": source.id},
                        )
                    )
        return jobs

    def theta_lr(self) -> list[Job]:
        """Table 1's intrinsic runs again under the paper's rule: plain V theta at its lr."""
        cfg, lr = self.cfg, self.cfg.paper_theta_lr
        return [
            self.job(
                "theta_lr",
                task,
                "intrinsic",
                seed,
                dim=cfg.dim,
                variant=f"delta-lr{lr:g}-plain",
                basis=self.paths.task_basis(task),
                theta_lr=lr,
                theta_scale="none",
                meta={"basis_from": task, "mode": "delta"},
            )
            for task in cfg.tasks
            for seed in cfg.seeds
        ]

    def d90_point(self, task: str, method: str, d: int, seed: int) -> Job:
        """One point of a d90 search. fastfood / said: Aghajanyan et al.'s DID and SAID, one
        global theta of d parameters; intrinsic: the task's layer-wise basis at d per layer;
        random: a layer-wise random basis at d per layer."""
        if method == "intrinsic":
            return self.intrinsic("d90", task, d, seed)
        if method == "random":
            return self.job("d90", task, "random", seed, dim=d)
        return self.job(
            "d90",
            task,
            "fastfood",
            seed,
            dim=d,
            variant="global",
            said=method == "said",
            scope="global",
        )


def with_phase(job: Job, phase: str) -> Job:
    return dataclasses.replace(job, phase=phase)
