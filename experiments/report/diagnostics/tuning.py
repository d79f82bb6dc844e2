"""How the learning rates were chosen (DIR/tuning.json): the searches and the freeze gate.

Why in the report: a chosen lr is only trustworthy when it was picked on a split the tables do
not report; the section says which split it was, and calls the scores optimistic if it was dev.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from typing import Any

from experiments.report.diagnostics.cells import (
    as_dict,
    as_float,
    fmt_pct,
    ordered_tasks,
)
from experiments.report.diagnostics.files import TUNING_FILE
from experiments.report.markdown import DASH, Section, avg_cell, fmt, fmt_pts, md_table
from experiments.report.results import Results
from experiments.report.stats import Stat, stat

T_TUNING = "Hyper-parameters and the gate"


def section_tuning(res: Results, tuning: Mapping | None) -> Section | None:
    if tuning is None:
        return None
    searches, gate = as_dict(tuning.get("searches")), as_dict(tuning.get("gate"))
    body = [_tuning_split_line(tuning)]
    for name, search in searches.items():
        body += _search_part(res, str(name), as_dict(search))
    if gate:
        body += [_gate_table(res, gate), _gate_line(gate)]
    if not searches and not gate:
        body.append(f"{TUNING_FILE} has no searches and no gate yet.")
    return Section(T_TUNING, body)


def _tuning_split_line(tuning: Mapping) -> str:
    split = tuning.get("split")
    seed, size = tuning.get("seed", DASH), tuning.get("tune_size", DASH)
    where = f"the {split!r} split" if split else "an unnamed split"
    where += f" (seed {seed}, {size} examples)"
    if split == "dev":
        return (
            f"Every learning rate below was chosen on {where}: that is the dev split the "
            "tables report, so their scores are tuned on and optimistic."
        )
    return (
        f"Every learning rate below was chosen on {where}, never on the dev split the tables "
        "report. Cells: score ×100 on that split, one run each (n = 1; mean ± std where a "
        "cell holds several seeds); mean: over the tasks."
    )


def _lr_scores(search: Mapping) -> dict[float, dict]:
    out = {}
    for key, row in as_dict(search.get("scores")).items():
        lr = as_float(key)
        if lr is not None:
            out[lr] = as_dict(row)
    return out


def _cell_stat(v: Any) -> Stat | None:
    return stat(v) if isinstance(v, list) else stat([v])


def _same(a: float | None, b: float | None) -> bool:
    return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-9)


def _search_part(res: Results, name: str, search: Mapping) -> list[str]:
    scores = _lr_scores(search)
    grid = sorted(
        {x for x in map(as_float, search.get("grid") or []) if x is not None} | set(scores)
    )
    tasks = ordered_tasks(res, {t for row in scores.values() for t in row})
    chosen = as_float(search.get("chosen"))
    rows, means = [], {}
    for lr in grid:
        stats = {t: s for t in tasks if (s := _cell_stat(scores.get(lr, {}).get(t))) is not None}
        if len(stats) == len(tasks) and stats:
            means[lr] = statistics.fmean(100 * s.mean for s in stats.values())
        label = f"{lr:g}" + (" **(chosen)**" if _same(lr, chosen) else "")
        rows.append([label, *(fmt(stats.get(t)) for t in tasks), avg_cell(stats, tasks)])
    dim = search.get("dim")
    head = (
        f"**{name}** ({search.get('method', '?')} runs"
        + (f", dim {dim}" if dim else "")
        + "): "
        + _chosen_line(chosen, means)
    )
    return [head, md_table([f"{name}", *tasks, "mean"], rows) if rows else "No grid points."]


def _chosen_line(chosen: float | None, means: Mapping[float, float]) -> str:
    if chosen is None:
        return "no lr chosen yet."
    if not means:
        return f"chosen {chosen:g}."
    best = max(means, key=means.get)
    if _same(best, chosen):
        return f"chosen {chosen:g}, the grid's best mean ({fmt_pts(means[best])})."
    mine = next((fmt_pts(v) for lr, v in means.items() if _same(lr, chosen)), DASH)
    return (
        f"chosen {chosen:g} (mean {mine}); the grid's best mean is {fmt_pts(means[best])} "
        f"at {best:g}."
    )


def _gate_table(res: Results, gate: Mapping) -> str:
    rows = []
    for t in ordered_tasks(res, gate):
        g = as_dict(gate[t])
        freeze, major, margin = (as_float(g.get(k)) for k in ("freeze", "majority", "margin"))
        gap = 100 * (freeze - major) if freeze is not None and major is not None else None
        passed = {True: "yes", False: "**no**"}.get(g.get("passed"), DASH)
        row = [t, g.get("metric", DASH), fmt_pct(freeze), fmt_pct(major), fmt_pts(gap, True)]
        rows.append(row + [fmt_pct(margin), passed])
    header = ["task", "metric", "freeze", "majority class", "freeze − majority", "margin", "passed"]
    return md_table(header, rows)


def _gate_line(gate: Mapping) -> str:
    passed = [t for t, g in gate.items() if as_dict(g).get("passed") is True]
    failed = [t for t in gate if t not in passed]
    text = (
        f"Gate (on the tuning split, one run per task, n = 1): {len(passed)} of {len(gate)} "
        "tasks passed (freeze must beat the majority-class score by the margin, in points)"
    )
    return text + (f"; not passed: {', '.join(failed)}." if failed else ".")
