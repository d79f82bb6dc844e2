"""Which runs each part of the paper needs, as `Job`s with stable ids.

A job id names everything that decides its number (method, task, basis, mode, dim, seed), so
two tables that need the same run share it (intrinsic at dim 16 is in Table 5, the modes
comparison and the d90 search) and the ledger trains it once.

Ids: ``{method}/{task}/{variant}/d{dim}/s{seed}``, e.g. ``intrinsic/trec6/delta/d32/s1``,
``transfer/trec6/from-sms_spam/d32/s0``, ``full/trec6/disable-outlier/d0/s2``.

One run becomes a job in experiments.run_builder; `Job` and `Paths` are in experiments.job.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from experiments.config import DISABLE_MODES
from experiments.job import Job, Paths, with_phase
from experiments.run_builder import DEV_FRACTION, RunBuilder
from experiments.tune import SEARCHES

__all__ = ["DEV_FRACTION", "MODES", "Job", "Paths", "Planner", "with_phase"]

MODES = ("raw", "delta", "centered")


class Planner(RunBuilder):
    """Jobs of every phase. lrs: the learning rates phase tune chose (experiments.tune), for
    the settings the config leaves open (None); a fixed config value wins."""

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
