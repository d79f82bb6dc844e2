"""The "Outliers, with controls" section: Table 3 both ways, where the outliers sit, T3, T3c.

Each control zeroes another set of encoder weights (the outliers, as many random ones, the
outliers without their LayerNorm gains, ...), so the section can tell task knowledge from the
mechanics of zeroing.
"""

from __future__ import annotations

from collections.abc import Mapping

from experiments.ledger import RUNS_FILE
from experiments.report.diagnostics.cells import as_dict, mean_of, ordered_tasks
from experiments.report.diagnostics.contrast import (
    CONTROLS,
    Scores,
    held_scores,
    posthoc_scores,
)
from experiments.report.diagnostics.files import OUTLIERS_FILE, PRODUCERS
from experiments.report.diagnostics.outlier_sites import where_parts
from experiments.report.diagnostics.t3 import t3_finding, t3c_finding
from experiments.report.markdown import DASH, Section, avg_cell, md_table
from experiments.report.results import Results
from experiments.report.selectors import disabled
from experiments.report.stats import stat

T_CONTROLS = "Outliers, with controls"
CONTROL_LABELS = {
    "none": "none (full fine-tuning)",
    "outlier": "outlier: the outlier weights",
    "random": "random: as many uniformly random weights",
    "outlier_non_ln": "outlier_non_ln: the outliers that are not LayerNorm gains",
    "outlier_ln": "outlier_ln: only the outliers that are LayerNorm gains",
    "ln_gains": "ln_gains: every LayerNorm gain",
    "random_matched": "random_matched: random weights, the outliers' count per component",
}


def section_controls(res: Results, outliers: Mapping | None) -> Section | None:
    held = held_scores(res)
    has_held = any(held[m] for m in CONTROLS)
    if outliers is None and not has_held:
        return None
    data = outliers or {}
    post = posthoc_scores(as_dict(data.get("posthoc")))
    sigma = data.get("sigma", res.cfg.get("sigma"))
    body = [
        f"Outliers: the {sigma}σ entries of V θ "
        f"({data.get('source', 'source not recorded')}). Each control zeroes another set of "
        "encoder weights; Table 3 is shown both ways: held at zero during full fine-tuning "
        "(runs.jsonl), and zeroed in the finished full model (no retraining). Cells: score ×100, "
        "mean ± std over seeds, (n=k) when a cell has k runs instead of one per seed.",
        "**Held at zero during fine-tuning**",
        _table3(res, held, _held_counts(res))
        if has_held
        else _missing(f"disable-* runs in {RUNS_FILE}"),
        "**Zeroed in the finished full model**",
        _table3(res, post, _posthoc_counts(data))
        if any(post.values())
        else _missing(f"'posthoc' in {OUTLIERS_FILE}"),
    ]
    body += where_parts(res, data) if outliers is not None else [_missing(OUTLIERS_FILE)]
    return Section(T_CONTROLS, body, [t3_finding(held, post), t3c_finding(held, post)])


def _missing(what: str) -> str:
    return f"No {what} yet (written by the {PRODUCERS[OUTLIERS_FILE]} phase)."


def _table3(res: Results, scores: Scores, counts: Mapping[str, float]) -> str:
    tasks = ordered_tasks(res, {t for cells in scores.values() for t, _ in cells})
    rows = []
    for mode in ("none", *CONTROLS):
        stats = {
            t: s for t in tasks if (s := stat(v for (tt, _), v in scores[mode].items() if tt == t))
        }
        count = counts.get(mode)
        rows.append(
            [
                CONTROL_LABELS[mode],
                *(res.fmt(stats.get(t)) for t in tasks),
                avg_cell(stats, tasks),
                DASH if count is None else f"{count:,.0f}",
            ]
        )
    return md_table(["zeroed", *tasks, "Avg.", "weights zeroed (mean)"], rows)


def _held_counts(res: Results) -> dict[str, float]:
    out = {m: mean_of(r.get("held_zero") for r in res.select(disabled(m))) for m in CONTROLS}
    return {m: v for m, v in out.items() if v is not None}


def _posthoc_counts(data: Mapping) -> dict[str, float]:
    rows = [
        as_dict(as_dict(e).get("counts"))
        for seeds in as_dict(data.get("posthoc")).values()
        for e in as_dict(seeds).values()
    ]
    out = {m: mean_of(c.get(m) for c in rows) for m in CONTROLS}
    return {m: v for m, v in out.items() if v is not None}
