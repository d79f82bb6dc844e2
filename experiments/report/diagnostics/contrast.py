"""Table 3's scores per control, both ways, and the contrasts (a − b) that T3 and T3c judge.

Held at zero during fine-tuning (runs.jsonl's disable-* runs) or zeroed post hoc in the
finished full model (outliers.json's 'posthoc'): one score per (task, seed) and control mode,
so a contrast can show its spread over seeds.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from dataclasses import dataclass

from experiments.report.diagnostics.cells import as_dict, seed_key
from experiments.report.markdown import DASH
from experiments.report.results import Results
from experiments.report.selectors import disabled, is_full
from experiments.report.stats import Stat, finite, stat

# worker.finetune.outlier_controls.CONTROL_MODES in the order the table shows them (a test
# checks that the two name the same modes).
CONTROLS = ("outlier", "random", "outlier_non_ln", "outlier_ln", "ln_gains", "random_matched")

Scores = dict[str, dict[tuple[str, str], float]]  # mode -> (task, seed) -> score


def held_scores(res: Results) -> Scores:
    """Table 3 held at zero during fine-tuning, from runs.jsonl: 'none' is plain full."""
    out: Scores = {}
    for mode in ("none", *CONTROLS):
        sel = is_full if mode == "none" else disabled(mode)
        cells: dict[tuple[str, str], list[float]] = {}
        for r in res.select(sel):
            if finite(r.get("score")):
                cells.setdefault((r["task"], seed_key(r)), []).append(float(r["score"]))
        out[mode] = {k: statistics.fmean(v) for k, v in cells.items()}
    return out


def posthoc_scores(posthoc: Mapping) -> Scores:
    """Table 3 zeroed in the finished full model, from outliers.json's 'posthoc'."""
    out: Scores = {mode: {} for mode in ("none", *CONTROLS)}
    for task, seeds in posthoc.items():
        for seed, row in as_dict(seeds).items():
            for mode in out:
                if finite(as_dict(row).get(mode)):
                    out[mode][(str(task), str(seed))] = float(row[mode])
    return out


@dataclass(frozen=True)
class Contrast:
    """a − b in points over the (task, seed) pairs both have."""

    gap: float | None  # mean over tasks of the per-task mean difference
    per_task: dict[str, float]
    by_seed: Stat | None  # per seed: mean over tasks of the difference (the seed spread)


def contrast(scores: Scores, a: str, b: str) -> Contrast:
    sa, sb = scores.get(a, {}), scores.get(b, {})
    pairs = {k: 100 * (sa[k] - sb[k]) for k in sa if k in sb}
    by_task: dict[str, list[float]] = {}
    by_seed: dict[str, list[float]] = {}
    for (task, seed), d in pairs.items():
        by_task.setdefault(task, []).append(d)
        by_seed.setdefault(seed, []).append(d)
    per_task = {t: statistics.fmean(v) for t, v in by_task.items()}
    gap = statistics.fmean(per_task.values()) if per_task else None
    return Contrast(gap, per_task, stat(statistics.fmean(v) for v in by_seed.values()))


def fmt_contrast(c: Contrast) -> str:
    """'12.3 points (per seed 12.3 ± 1.0, n = 3 seeds; 2 tasks)'."""
    if c.gap is None:
        return DASH
    s = c.by_seed
    spread = f"{s.mean:.1f} ± {s.std:.1f}" if s and s.std is not None else "one seed"
    n = f", n = {s.n} seeds" if s and s.std is not None else ""
    return f"{c.gap:.1f} points (per seed {spread}{n}; {len(c.per_task)} tasks)"
