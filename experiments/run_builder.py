"""`RunBuilder`: one run of the experiment as a `Job`, its id naming everything that decides its
number, and the learning rates it trains at (fixed by the config or chosen by phase tune)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from experiments.config import PaperConfig
from experiments.job import Job, Paths
from storage.errors import InvalidInput
from storage.trajectory import MANIFEST as TRAJECTORY_MANIFEST
from worker.finetune.config import SubspaceConfig
from worker.finetune.runner import RunSpec
from worker.finetune.spec import basis_from_flags
from worker.finetune.train import TrainConfig

# The split is fixed by split_seed; 15% dev leaves at least 500 dev examples for every task.
# The tuning split (cfg.tune_fraction) is carved after dev: dev is the same with or without it.
DEV_FRACTION = 0.15


class RunBuilder:
    """Builds one run as a job. lrs: the learning rates phase tune chose (experiments.tune),
    for the settings the config leaves open (None); a fixed config value wins."""

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
            engine=cfg.engine,
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
            basis_ref=basis_from_flags(task, method, basis_task=basis_task)[0],
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
