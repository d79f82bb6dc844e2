"""Phase tune: every learning rate of the experiment, chosen on a tuning split, and the gate.

The tuning split is carved beside dev (`worker.finetune.data.load_task(tune_fraction=)`), and
its runs use a seed that is not an evaluation seed, so no number the report shows chose a
hyper-parameter. Each search trains one method at each value of its grid on every task and
keeps the value with the best mean over tasks (one setting for all tasks, as the paper uses).
The searches run in order, each with the values chosen before it:

    head_lr          freeze (embeddings and head train)           the head learns at all
    lr               full fine-tuning                              also the trajectory's lr
    theta_lr         intrinsic at dim, the task's delta basis      the default rule (extent)
    plain_theta_lr   random at dim                                 plain V theta (no spectrum)

The gate then compares freeze at the chosen head lr with the majority class on the same split:
a grid spent on a model whose head has not learned measures nothing (the committed report of
issue 6 had freeze at MCC 0.0 on sms_spam, the majority class, on every seed).

DIR/tuning.json holds every score, the choice and the gate (the report's tuning section).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from experiments.config import PaperConfig
from storage.errors import InvalidInput

TUNING_FILE = "tuning.json"
# (setting, method) in the order they are chosen.
SEARCHES = (
    ("head_lr", "freeze"),
    ("lr", "full"),
    ("theta_lr", "intrinsic"),
    ("plain_theta_lr", "random"),
)
# Searches that need the trajectory's basis.
NEEDS_BASIS = ("theta_lr",)


def majority_score(metric: str, labels: np.ndarray) -> float:
    """The score of always predicting the most frequent class (or the mean, for regression):
    accuracy = its share; Matthews and Pearson correlation are 0 for a constant prediction."""
    if metric == "accuracy":
        _, counts = np.unique(np.asarray(labels), return_counts=True)
        return float(counts.max() / counts.sum())
    if metric in ("matthews", "pearson"):
        return 0.0
    raise InvalidInput(f"no majority baseline for metric {metric!r}")


class Tuning:
    """The chosen values and their evidence, kept in DIR/tuning.json (written atomically)."""

    def __init__(self, out: Path, cfg: PaperConfig) -> None:
        self.path = Path(out) / TUNING_FILE
        self.cfg = cfg
        self.data: dict[str, Any] = {
            "split": "tune",
            "seed": cfg.tune_seed,
            "tune_size": cfg.tune_size,
            "searches": {},
            "gate": {},
        }
        if self.path.exists():
            self.data.update(json.loads(self.path.read_text()))

    def value(self, name: str) -> float | None:
        """The fixed setting, else the chosen one, else None (not chosen yet)."""
        fixed = getattr(self.cfg, name)
        if fixed is not None:
            return float(fixed)
        chosen = self.data["searches"].get(name, {}).get("chosen")
        return None if chosen is None else float(chosen)

    def values(self) -> dict[str, float | None]:
        return {name: self.value(name) for name, _ in SEARCHES}

    def record(
        self, name: str, method: str, dim: int | None, scores: Mapping[float, Mapping[str, float]]
    ) -> float:
        """Store a search's scores (value -> task -> score) and choose the best mean."""
        means = {v: float(np.mean(list(per.values()))) for v, per in scores.items() if per}
        if not means:
            raise InvalidInput(f"the {name} search has no finished runs to choose from")
        chosen = max(sorted(means), key=lambda v: means[v])
        self.data["searches"][name] = {
            "method": method,
            "dim": dim,
            "grid": sorted(float(v) for v in scores),
            "scores": {f"{v:g}": dict(per) for v, per in sorted(scores.items())},
            "means": {f"{v:g}": m for v, m in sorted(means.items())},
            "chosen": float(chosen),
        }
        self._save()
        return float(chosen)

    def gate(self, freeze: Mapping[str, float], majority: Mapping[str, float], metrics) -> None:
        """Record the gate; raise when freeze does not beat the majority class on a task."""
        margin = self.cfg.gate_margin
        rows = {}
        for task, score in freeze.items():
            base = majority[task]
            passed = margin is None or score >= base + margin
            rows[task] = {
                "metric": metrics[task],
                "freeze": float(score),
                "majority": float(base),
                "margin": margin,
                "passed": bool(passed),
            }
        self.data["gate"] = rows
        self._save()
        failed = {t: r for t, r in rows.items() if not r["passed"]}
        if failed:
            detail = ", ".join(
                f"{t}: freeze {r['freeze']:.3f} vs majority {r['majority']:.3f}"
                for t, r in failed.items()
            )
            raise InvalidInput(
                f"the gate failed: freeze does not beat the majority class by {margin} on the "
                f"tuning split ({detail}); the head is not learning, so the grid would measure "
                "nothing. Widen head_lr_grid or give more steps, then run again."
            )

    def _save(self) -> None:
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=2))
        os.replace(tmp, self.path)
