"""The phases that train nothing: diagnostics (spectrum, extent, oracle curve) and outliers
(where they sit, what they overlap, and Table 3 zeroed in the finished full models).

Both write one JSON file in DIR, task by task, so a stopped run resumes where it was:

- diagnostics.json: ``spectrum`` {task: {mode, layers}}, ``extent`` {task: {layer: [max motion
  along v_k]}}, ``oracle`` {task: {metric, full_score, points: [{k, captured, residual,
  score}]}}. The oracle sets every encoder layer to theta0 + P_k delta_final (the trajectory
  run's final update projected on the first k basis vectors) with that run's own head and
  embeddings, and scores it on dev: how much of full fine-tuning the first k directions hold.
- outliers.json: ``runs`` {task: {seed: enrichment, overlaps}}, ``cross_task``, ``posthoc``
  {task: {seed: {mode: score}}}: the paper-protocol run's outliers (raw basis, plain V theta)
  zeroed in the same seed's finished full model, with the controls of
  `worker.finetune.outlier_controls`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import torch

from experiments.config import DISABLE_MODES, PaperConfig
from experiments.plan import DEV_FRACTION, Planner
from storage.basis import BasisStore
from storage.errors import InvalidInput
from storage.trajectory import TrajectoryStore
from worker.finetune import diagnostics
from worker.finetune import outlier_controls as oc
from worker.finetune.data import load_task
from worker.finetune.outliers import load_arrays
from worker.finetune.train import TrainConfig, evaluate

DIAGNOSTICS_FILE = "diagnostics.json"
OUTLIERS_FILE = "outliers.json"
POSTHOC_MODES = (*DISABLE_MODES, "ln_gains")

Tick = Callable[[str, int, int], None]


def _load(path: Path, empty: dict[str, Any]) -> dict[str, Any]:
    return {**empty, **json.loads(path.read_text())} if path.exists() else dict(empty)


def _save(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=float))
    os.replace(tmp, path)


def _task_data(cfg: PaperConfig, task: str):
    return load_task(
        task,
        dev_fraction=DEV_FRACTION,
        train_size=cfg.train_size,
        dev_size=cfg.dev_size,
        tune_fraction=cfg.tune_fraction,
        tune_size=cfg.tune_size,
    )


def _saved_model(run_dir: str):
    """The merged model and tokenizer a run saved (save_model=True)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer  # noqa: PLC0415 - transformers: optional, slow

    folder = os.path.join(run_dir, "model")
    if not os.path.isdir(folder):
        raise InvalidInput(f"{run_dir} kept no model (save_model); rerun its phase")
    model = AutoModelForSequenceClassification.from_pretrained(folder, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return model.eval(), tokenizer


def _scorer(cfg: PaperConfig, task_data, tokenizer) -> Callable[[Any], float]:
    train_cfg = TrainConfig(max_length=cfg.max_length, device="cpu")
    return lambda model: float(evaluate(model, tokenizer, task_data, train_cfg)[task_data.metric])


# ----------------------------------------------------------------------------- diagnostics
def diagnose(out: Path, planner: Planner, tick: Tick | None = None) -> dict[str, Any]:
    """Spectrum, trajectory extent and oracle curve per task (skips tasks already done)."""
    cfg, paths = planner.cfg, planner.paths
    path = out / DIAGNOSTICS_FILE
    data = _load(path, {"spectrum": {}, "extent": {}, "oracle": {}})
    trajectory_jobs = {j.spec.task: j for j in planner.trajectories()}
    for i, task in enumerate(cfg.tasks):
        if tick:
            tick("diagnostics", i, len(cfg.tasks))
        if task in data["oracle"]:
            continue
        basis = BasisStore.open(str(paths.task_basis(task, "delta")))
        traj = TrajectoryStore.open(str(paths.trajectory(task)))
        layers = basis.layer_names
        bases = {g: basis.load(g) for g in layers}
        first = {g: traj.read_row(0, g) for g in layers}
        last = {g: traj.read_row(traj.num_rows - 1, g) for g in layers}
        data["spectrum"][task] = {"mode": "delta", "layers": diagnostics.spectrum_table(basis)}
        data["extent"][task] = {
            g: diagnostics.trajectory_extent(traj, g, bases[g]).tolist() for g in layers
        }
        model, tokenizer = _saved_model(trajectory_jobs[task].spec.out)
        task_data = _task_data(cfg, task)
        score = _scorer(cfg, task_data, tokenizer)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        rank = min(v.shape[1] for v in bases.values())
        captured = {
            g: diagnostics.oracle_projection(first[g], last[g], bases[g], range(1, rank + 1))
            for g in layers
        }
        points = []
        for k in range(1, rank + 1):
            oracle = diagnostics.oracle_state(state, traj.layout, first, last, bases, k)
            with torch.no_grad():
                model.load_state_dict(oracle)
            points.append(
                {
                    "k": k,
                    "captured": float(np.mean([captured[g][k - 1]["captured"] for g in layers])),
                    "residual": float(np.mean([captured[g][k - 1]["residual"] for g in layers])),
                    "score": score(model),
                }
            )
        model.load_state_dict(state)
        data["oracle"][task] = {
            "metric": task_data.metric,
            "full_score": score(model),
            "points": points,
        }
        _save(path, data)
    if tick:
        tick("diagnostics", len(cfg.tasks), len(cfg.tasks))
    _save(path, data)
    return data


# ----------------------------------------------------------------------------- outliers
def outliers(out: Path, planner: Planner, tick: Tick | None = None) -> dict[str, Any]:
    """Where the paper-protocol outliers sit, and Table 3 zeroed in the finished models."""
    cfg, paths = planner.cfg, planner.paths
    path = out / OUTLIERS_FILE
    data = _load(
        path,
        {
            "sigma": cfg.sigma,
            "source": "intrinsic, raw basis, plain V theta at the paper's lr (its protocol)",
            "runs": {},
            "cross_task": [],
            "posthoc": {},
        },
    )
    layout = TrajectoryStore.open(str(paths.trajectory(cfg.tasks[0]))).layout
    found: dict[tuple[str, int], dict[str, np.ndarray]] = {}
    pairs = [(t, s) for t in cfg.tasks for s in cfg.seeds]
    for i, (task, seed) in enumerate(pairs):
        if tick:
            tick("outliers", i, len(pairs))
        source = planner.paper_protocol(task, seed)
        arrays = load_arrays(source.spec.out)
        positions = {layer: a["indices"] for layer, a in arrays.items()}
        found[(task, seed)] = positions
        runs = data["runs"].setdefault(task, {})
        if str(seed) not in runs:
            runs[str(seed)] = _where(layout, positions, paths.trajectory(task))
        posthoc = data["posthoc"].setdefault(task, {})
        if str(seed) not in posthoc:
            posthoc[str(seed)] = _posthoc(cfg, planner, task, seed, layout, positions)
        _save(path, data)
    sizes = {g.name: g.size for g in layout.groups}
    data["cross_task"] = [
        {"a": a, "b": b, "seed": s, **_total(oc.overlap(found[(a, s)], found[(b, s)], sizes=sizes))}
        for s in cfg.seeds
        for a, b in combinations(cfg.tasks, 2)
    ]
    if tick:
        tick("outliers", len(pairs), len(pairs))
    _save(path, data)
    return data


def _total(overlap: dict[str, Any]) -> dict[str, Any]:
    total = overlap.get("total", overlap)
    keep = ("intersection", "a", "b", "jaccard", "expected_jaccard")
    return {k: total[k] for k in keep if k in total}


def _where(layout, positions, trajectory: Path) -> dict[str, Any]:
    traj = TrajectoryStore.open(str(trajectory))
    theta0 = {g: traj.read_row(0, g) for g in positions}
    count = int(sum(p.size for p in positions.values()))
    size = int(sum(layout.group(g).size for g in positions))
    ln, _ = oc.split_positions(layout, positions)
    gains = sum(int(oc.layernorm_gain_mask(layout, g).sum()) for g in positions)
    top = oc.top_magnitude_overlap(positions, theta0)
    return {
        "count": count,
        "fraction": count / size if size else 0.0,
        "enrichment": oc.enrichment(layout, positions),
        "theta0_top_overlap": top.get("total", top),
        "ln_gain_share": sum(p.size for p in ln.values()) / count if count else 0.0,
        "ln_gain_param_share": gains / size if size else 0.0,
    }


def _posthoc(cfg, planner: Planner, task: str, seed: int, layout, positions) -> dict[str, Any]:
    """Zero each control's weights in the finished full model of the same task and seed."""
    full = next(
        j
        for j in planner.table1()
        if j.spec.task == task and j.spec.method == "full" and j.spec.train.seed == seed
    )
    model, tokenizer = _saved_model(full.spec.out)
    score = _scorer(cfg, _task_data(cfg, task), tokenizer)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    result: dict[str, Any] = {"none": score(model), "counts": {}}
    for mode in POSTHOC_MODES:
        masks = oc.control_masks(layout, positions, mode=mode, seed=seed)
        # The saved model is a plain ...ForSequenceClassification: its names match the layout.
        result["counts"][mode] = oc.zero_weights(model, masks)
        result[mode] = score(model)
        model.load_state_dict(state)
    return result
