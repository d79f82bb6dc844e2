"""Learning curves: held-out score and training loss along each run (runs.jsonl's `curve`,
`losses`).

Why: a table shows the last point only; the curve shows what stopping at the end instead of at
the best step cost, and whether a run was still climbing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from experiments.report.diagnostics.cells import as_float, dicts_in, figure_at
from experiments.report.diagnostics.plots import curves_plot
from experiments.report.markdown import Section, fmt, md_table
from experiments.report.results import Record, Results, Selector
from experiments.report.selectors import intrinsic_at, is_freeze, is_full, random_at
from experiments.report.stats import finite, stat

FIG_CURVES = "fig_curves.png"
T_CURVES = "Learning curves"


def _curve(r: Record) -> list[tuple[float, float]]:
    """(step, held-out score) of a run's learning curve, in step order."""
    metric = r.get("metric")
    pts = [
        (float(p["step"]), float(p[metric]))
        for p in dicts_in(r.get("curve"))
        if finite(p.get("step")) and finite(p.get(metric))
    ]
    return sorted(pts)


def curve_groups(res: Results) -> dict[str, Selector]:
    """Label -> selector of the runs with a learning curve: full, freeze, and intrinsic
    (delta basis) and random at each dim that has curves."""
    have = [r for r in res.records if _curve(r)]
    groups: dict[str, Selector] = {"full": is_full, "freeze": is_freeze}
    for method, at in (("intrinsic", intrinsic_at), ("random", random_at)):
        dims = sorted({r["dim"] for r in have if r["method"] == method and finite(r.get("dim"))})
        groups.update({f"{method} (dim {d})": at(d) for d in dims})
    return groups


def section_curves(res: Results, out_dir: Path, draw: bool) -> Section | None:
    groups = curve_groups(res)
    rows, panels = [], {}
    for label, sel in groups.items():
        for t in res.tasks:
            runs = [r for r in res.select(sel, t) if _curve(r)]
            if not runs:
                continue
            rows.append(_curve_row(res, label, t, runs))
            panels.setdefault(t, {})[label] = _panel(_first_seed(runs))
    if not rows:
        return None
    body = [
        "Held-out score along training (the run's `curve`) and training loss. Table: the last "
        "point of the curve and the best point anywhere on it, ×100, mean ± std over seeds "
        "(n = runs when it differs from the seed count); best − final: points lost by "
        "stopping at the end instead of at the best step. Figure: the first seed's run of each "
        "method, loss as a moving average.",
        md_table(["run", "task", "final", "best in curve", "best − final", "runs"], rows),
        figure_at(
            out_dir,
            draw,
            FIG_CURVES,
            "Learning curves",
            bool(panels),
            lambda p: curves_plot(panels, p),
        ),
    ]
    return Section(T_CURVES, body)


def _first_seed(runs: Sequence[Record]) -> Record:
    return min(runs, key=lambda r: as_float(r.get("seed")) if finite(r.get("seed")) else math.inf)


def _curve_row(res: Results, label: str, task: str, runs: Sequence[Record]) -> list[str]:
    final = stat(_curve(r)[-1][1] for r in runs)
    best = stat(max(v for _, v in _curve(r)) for r in runs)
    lost = stat(100 * (max(v for _, v in _curve(r)) - _curve(r)[-1][1]) for r in runs)
    return [label, task, res.fmt(final), res.fmt(best), fmt(lost, scale=1.0), str(len(runs))]


def _panel(r: Record) -> dict[str, list[tuple[float, float]]]:
    losses = [float(x) for x in r.get("losses") or [] if finite(x)]
    return {"loss": moving_average(losses), "score": [(s, 100 * v) for s, v in _curve(r)]}


def moving_average(values: Sequence[float], window: int | None = None) -> list[tuple[float, float]]:
    """(step, mean of the `window` losses ending at that step); steps count from 1. The default
    window is a twentieth of the run: per-batch losses are too noisy to read."""
    if not values:
        return []
    w = max(1, min(len(values), window or len(values) // 20))
    smooth = np.convolve(np.asarray(values, dtype=float), np.ones(w) / w, mode="valid")
    return [(float(w + i), float(v)) for i, v in enumerate(smooth)]
