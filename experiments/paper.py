"""`tinysub experiment paper`: every finding of Zhang, Liu and Shao (2023), plus Aghajanyan et
al.'s d90, as one resumable experiment through our own store, kernels and fine-tuning worker.

Phases, each resumable on its own:

==========  ==================================================================================
tune        every lr chosen on a tuning split, then the gate (experiments/tune.py)
trajectory  full fine-tuning per task over trajectory_steps, seed tune_seed, t rows recorded
bases       per task: delta (t), raw (dim), centered (modes_dim), global; unified and zero-shot
diagnostics spectrum, trajectory extent, oracle curve (experiments/analysis.py)
table1      full, freeze, random and intrinsic at dim                        (Table 1)
transfer    each task in each other task's basis                             (Figure 2)
unified     unified and zero-shot bases                                      (Table 2)
ablation    intrinsic at each ablation dim                                   (Tables 5, 6)
scope       global basis vs layer-wise at equal free parameters              (new)
modes       raw / delta / centered side by side; the paper-protocol raw runs (new)
disable     full fine-tuning with outlier weights (and controls) held at 0   (Table 3)
outliers    where the outliers sit; Table 3 zeroed in the finished models    (new)
d90         d90 searches                                                     (Aghajanyan et al.)
theta_lr    Table 1's intrinsic runs at the paper's theta lr (0.01)          (setup check)
==========  ==================================================================================

DIR gets runs.jsonl, config.json, phases.json, tuning.json, diagnostics.json, outliers.json,
d90.json, report.md and the figures; the large
intermediate data (trajectories, bases, run folders) lives in the work folder (DIR/work by
default) and is never needed again once the report is written.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from experiments import analysis
from experiments.analysis import _task_data
from experiments.config import D90_METHODS, PaperConfig
from experiments.d90 import D90Search
from experiments.ledger import Ledger
from experiments.plan import DEV_FRACTION, Paths, Planner
from experiments.report import build_report
from experiments.scheduler import BudgetSpent, Scheduler
from experiments.tune import NEEDS_BASIS, SEARCHES, Tuning, majority_score
from storage.basis import BasisStore
from storage.errors import InvalidInput
from storage.trajectory import TrajectoryStore
from worker.svd.bases import multitask_bases, task_basis

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
PHASES_FILE = "phases.json"
D90_FILE = "d90.json"

Progress = Callable[[str, int, int], None]


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


class PaperExperiment:
    def __init__(
        self,
        cfg: PaperConfig,
        out: str | os.PathLike,
        *,
        work: str | os.PathLike | None = None,
        budget_minutes: float | None = None,
        progress: Progress | None = None,
        command: str | None = None,
    ) -> None:
        self.cfg = cfg
        self.out = Path(out)
        self.paths = Paths(Path(work) if work else self.out / "work")
        self.progress = progress
        self.command = command
        self.deadline = None if budget_minutes is None else time.time() + 60 * budget_minutes
        self.out.mkdir(parents=True, exist_ok=True)
        self._check_config()
        self.ledger = Ledger(self.out)
        self.tuning = Tuning(self.out, cfg)
        self.planner = Planner(cfg, self.paths, self.tuning.values())

    # ------------------------------------------------------------------ bookkeeping
    def _check_config(self) -> None:
        """A DIR holds one configuration: resuming with other settings would mix numbers."""
        path = self.out / CONFIG_FILE
        mine = self.cfg.to_dict()
        if path.exists():
            saved = json.loads(path.read_text())
            # A setting added after the folder was written counts as its default there.
            defaults = PaperConfig().to_dict()
            theirs = {k: saved.get(k, defaults.get(k)) for k in mine}
            # workers only changes how fast, never the numbers
            diff = sorted(k for k in mine if k != "workers" and theirs[k] != mine[k])
            if diff:
                raise InvalidInput(
                    f"{self.out} holds an experiment with other settings ({', '.join(diff)}); "
                    "use another --out folder or the same settings"
                )
            extra = {k: v for k, v in saved.items() if k not in mine}
        else:
            extra = {}
        extra.update(
            record_every=self.cfg.record_every,
            unified_dim=self.cfg.unified_dim,
            zeroshot_dim=self.cfg.zeroshot_dim,
            dev_fraction=DEV_FRACTION,
        )
        if self.command:
            extra["command"] = self.command
        _write_json(path, {**mine, **extra})

    def _set_config_extra(self, **values: Any) -> None:
        path = self.out / CONFIG_FILE
        data = json.loads(path.read_text())
        data.update(values)
        _write_json(path, data)

    def _add_phase_time(self, phase: str, wall: float, scheduler: Scheduler | None) -> None:
        path = self.out / PHASES_FILE
        data = json.loads(path.read_text()) if path.exists() else {}
        entry = data.setdefault(phase, {"wall_seconds": 0.0, "runs": 0, "run_seconds": 0.0})
        entry["wall_seconds"] += wall
        records = [r for r in self.ledger if r.get("phase") == phase]
        entry["runs"] = len(records)
        entry["run_seconds"] = sum(r["seconds"] for r in records)
        _write_json(path, data)

    # ------------------------------------------------------------------ phases
    def _phase(self, name: str, scheduler: Scheduler, body: Callable[[], Any]) -> Any:
        started = time.time()
        try:
            return body()
        finally:
            self._add_phase_time(name, time.time() - started, scheduler)

    def _tune(self, scheduler: Scheduler, names: tuple[str, ...]) -> None:
        """Choose each open setting of `names` on the tuning split, in order (each search runs
        with the values chosen before it); the gate follows the head search."""
        for name, method in SEARCHES:
            if name not in names or getattr(self.cfg, name) is not None:
                continue
            grid = getattr(self.cfg, f"{name}_grid")
            scores: dict[float, dict[str, float]] = {}
            for value in grid:
                jobs = self.planner.tune(name, value)
                records = scheduler.run("tune", jobs)
                scores[value] = {r["task"]: r["score"] for r in records}
            dim = self.cfg.dim if method in ("intrinsic", "random") else None
            self.tuning.record(name, method, dim, scores)
            self.planner.lrs = self.tuning.values()
            if name == "head_lr":
                self._gate(scores[self.tuning.value("head_lr")])
        self._set_config_extra(chosen=self.tuning.values())

    def _gate(self, freeze: dict[str, float]) -> None:
        tasks = {t: _task_data(self.cfg, t) for t in freeze}
        majority = {t: majority_score(d.metric, d.tune.labels) for t, d in tasks.items()}
        self.tuning.gate(freeze, majority, {t: d.metric for t, d in tasks.items()})

    def _trajectories(self, scheduler: Scheduler, tasks: list[str]) -> None:
        jobs = [j for j in self.planner.trajectories() if j.spec.task in tasks]
        for job in jobs:
            # A store without its run in the ledger, or without its manifest, never finished
            # (a committed run whose store is gone, as in a fresh clone, is recorded again).
            store = Path(job.spec.record_trajectory)
            if store.exists() and (job.id not in self.ledger or job.missing_products()):
                log.warning("removing the unfinished trajectory %s", store)
                shutil.rmtree(store)
        scheduler.run("trajectory", jobs)

    def _layers(self) -> int:
        store = TrajectoryStore.open(self.paths.trajectory(self.cfg.tasks[0]))
        return len(store.layout.groups)

    def _bases(self, tasks: list[str], *, everything: bool = True) -> None:
        cfg = self.cfg
        layers = self._layers()
        self._set_config_extra(layers=layers)
        wanted = self._task_bases(tasks, layers, everything=everything)
        todo = [(p, f) for p, f in wanted if not BasisStore.exists(p)]
        multi = everything and not all(
            BasisStore.exists(p)
            for p in [self.paths.unified(), *(self.paths.zeroshot(t) for t in cfg.tasks)]
        )
        total = len(wanted) + (1 if everything else 0)
        done = total - len(todo) - (1 if multi else 0)
        self._tick("bases", done, total)
        for path, compute in todo:
            if path.exists():
                self._recompute(path, compute)
            else:
                compute(path)
            done += 1
            self._tick("bases", done, total)
        if multi:
            self._multitask_bases()
            self._tick("bases", total, total)

    def _task_bases(
        self, tasks: list[str], layers: int, *, everything: bool
    ) -> list[tuple[Path, Callable[[Path], Any]]]:
        """(folder, compute) of each per-task basis: delta, and with `everything` raw, centered
        and global."""
        cfg = self.cfg
        wanted: list[tuple[Path, Callable[[Path], Any]]] = []
        for task in tasks:
            traj = str(self.paths.trajectory(task))
            wanted.append(
                (
                    self.paths.task_basis(task, "delta"),
                    lambda out, traj=traj: task_basis(traj, str(out), cfg.rows, mode="delta"),
                )
            )
            if not everything:
                continue
            # raw at Table 1's dim (Table 3 trains in it; the modes phase keeps its first
            # modes_dim columns: one computation for every dim); centered has rank t - 1.
            for mode, k in (("raw", cfg.dim), ("centered", cfg.modes_dim)):
                wanted.append(
                    (
                        self.paths.task_basis(task, mode),
                        lambda out, traj=traj, mode=mode, k=k: task_basis(
                            traj, str(out), k, mode=mode
                        ),
                    )
                )
            wanted.append(
                (
                    self.paths.global_basis(task),
                    lambda out, traj=traj: task_basis(
                        traj, str(out), cfg.equal_layer_dim * layers, mode="delta", scope="global"
                    ),
                )
            )
        return wanted

    def _multitask_bases(self) -> None:
        """The unified and zero-shot bases over all tasks, from every n-th row of each (about
        `unified_per_task` rows a task)."""
        cfg = self.cfg
        stores = {t: str(self.paths.trajectory(t)) for t in cfg.tasks}
        every = max(1, cfg.rows // cfg.unified_per_task)
        multitask_bases(
            stores,
            str(self.paths.multitask()),
            cfg.unified_dim,
            mode="delta",
            selection=f"every:{every}",
            overwrite=True,
        )

    @staticmethod
    def _recompute(path: Path, compute: Callable[[Path], Any]) -> None:
        # A basis folder without a manifest is an interrupted write (the manifest goes last).
        shutil.rmtree(path)
        compute(path)

    def _d90(self, scheduler: Scheduler, pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
        cfg = self.cfg
        full = self._means("full", "-")
        freeze = self._means("freeze", "-")
        searches = []
        for task, method in pairs:
            if task not in full:
                raise InvalidInput(f"d90 of {task} needs its full fine-tuning runs first")
            grid = cfg.d90_intrinsic_grid if method in ("intrinsic", "random") else None
            grid = grid or cfg.d90_fastfood_grid
            target = cfg.d90_fraction * full[task]
            searches.append(
                D90Search(task, method, grid, cfg.d90_seeds, target, refine=cfg.d90_refine)
            )
        scheduler.search(
            "d90",
            searches,
            lambda s, d, seed: self.planner.d90_point(s.task, s.method, d, seed),
        )
        results = [s.result() for s in searches]
        self._save_d90(results, full, freeze)
        return results

    def _means(self, method: str, variant: str) -> dict[str, float]:
        by_task: dict[str, list[float]] = {}
        for r in self.ledger:
            if r["method"] == method and r.get("variant") == variant:
                by_task.setdefault(r["task"], []).append(r["score"])
        return {t: sum(v) / len(v) for t, v in by_task.items()}

    def _save_d90(self, results: list[dict], full: dict, freeze: dict) -> None:
        path = self.out / D90_FILE
        data = json.loads(path.read_text()) if path.exists() else {"searches": []}
        keep = {(s["task"], s["method"]): s for s in data.get("searches", [])}
        keep.update({(s["task"], s["method"]): s for s in results})
        data["searches"] = list(keep.values())
        data["full"] = {**data.get("full", {}), **full}
        data["freeze"] = {**data.get("freeze", {}), **freeze}
        _write_json(path, data)

    def _tick(self, phase: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(phase, done, total)

    def _scheduler(self) -> Scheduler:
        return Scheduler(
            self.ledger, workers=self.cfg.workers, deadline=self.deadline, progress=self.progress
        )

    # ------------------------------------------------------------------ entry points
    def run(self) -> Path:
        """Every phase, then the report. Raises BudgetSpent (after writing a partial report)
        when the budget ends first; running again resumes."""
        cfg, planner = self.cfg, self.planner
        tasks = list(cfg.tasks)
        early = tuple(n for n, _ in SEARCHES if n not in NEEDS_BASIS)
        try:
            with self._scheduler() as sch:
                self._phase("tune", sch, lambda: self._tune(sch, early))
                self._phase("trajectory", sch, lambda: self._trajectories(sch, tasks))
                self._phase("bases", sch, lambda: self._bases(tasks))
                self._phase("tune", sch, lambda: self._tune(sch, NEEDS_BASIS))
                self._phase(
                    "diagnostics", sch, lambda: analysis.diagnose(self.out, planner, self._tick)
                )
                layers = self._layers()
                static = {
                    "table1": planner.table1,
                    "transfer": planner.transfer,
                    "unified": planner.unified,
                    "ablation": planner.ablation,
                    "scope": lambda: planner.scope(layers),
                    "modes": planner.modes,
                    "disable": planner.disable,
                }
                for name, jobs in static.items():
                    self._phase(name, sch, lambda name=name, jobs=jobs: sch.run(name, jobs()))
                self._phase(
                    "outliers", sch, lambda: analysis.outliers(self.out, planner, self._tick)
                )
                pairs = [(t, m) for t in tasks for m in cfg.d90_methods]
                self._phase("d90", sch, lambda: self._d90(sch, pairs))
                self._phase("theta_lr", sch, lambda: sch.run("theta_lr", planner.theta_lr()))
        except BudgetSpent:
            if len(self.ledger):
                self.report()  # what is done so far, with the rest marked as not run yet
            raise
        return self.report()

    def d90(self, task: str, method: str) -> dict[str, Any]:
        """One d90 search, with only what it needs: the task's full runs (and, for the
        intrinsic subspace, its trajectory and delta basis)."""
        if task not in self.cfg.tasks:
            raise InvalidInput(f"task {task!r} is not among this experiment's {self.cfg.tasks}")
        if method not in D90_METHODS:
            raise InvalidInput(f"unknown d90 method {method!r}; use {list(D90_METHODS)}")
        names = tuple(n for n, _ in SEARCHES if n not in NEEDS_BASIS)
        every = list(self.cfg.tasks)  # the lr searches average over every task
        with self._scheduler() as sch:
            self._phase("tune", sch, lambda: self._tune(sch, names))
            if method == "intrinsic":
                self._phase("trajectory", sch, lambda: self._trajectories(sch, every))
                self._phase("bases", sch, lambda: self._bases(every, everything=False))
                self._phase("tune", sch, lambda: self._tune(sch, NEEDS_BASIS))
            fulls = [j for j in self.planner.table1() if j.spec.task == task]
            fulls = [j for j in fulls if j.spec.method in ("full", "freeze")]
            self._phase("table1", sch, lambda: sch.run("table1", fulls))
            return self._phase("d90", sch, lambda: self._d90(sch, [(task, method)]))[0]

    def report(self) -> Path:
        return build_report(self.out)
