"""The oracle curve: what a run confined to a basis' first k directions could reach at best.

From DIR/diagnostics.json's 'oracle': full fine-tuning's final update projected on those
directions, scored with full's own head.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from experiments.report.diagnostics.cells import (
    as_dict,
    as_float,
    dicts_in,
    figure_at,
    fmt_pct,
    ordered_tasks,
)
from experiments.report.diagnostics.files import SPECTRUM_KS
from experiments.report.diagnostics.plots import oracle_plot
from experiments.report.markdown import DASH, Section, md_table
from experiments.report.results import Results

FIG_ORACLE = "fig_oracle.png"
T_ORACLE = "Oracle curve"


def section_oracle(res: Results, diag: Mapping | None, out_dir: Path, draw: bool) -> Section | None:
    oracle = as_dict((diag or {}).get("oracle"))
    if not oracle:
        return None
    tasks = ordered_tasks(res, oracle)
    points = {t: oracle_points(as_dict(oracle[t])) for t in tasks}
    ks = oracle_ks({p["k"] for pts in points.values() for p in pts})
    top = max(ks) if ks else None
    rows = [_oracle_row(t, as_dict(oracle[t]), points[t], ks) for t in tasks]
    header = ["task", "metric", "full", "freeze"]
    header += [f"k = {k}" + (" (t)" if k == top and len(ks) > 1 else "") for k in ks]
    curves = {t: {"points": points[t], **as_dict(oracle[t])} for t in tasks if points[t]}
    body = [
        "The oracle sets every encoder layer to θ0 + P_k δ, δ full fine-tuning's final update "
        "projected on the first k directions of the task's basis, and keeps full's own head: "
        "what a run confined to those k directions could reach at best. Cells: dev score ×100 "
        "(|P_k δ| / |δ| in brackets, %). One full run per task (the first seed): no seed spread "
        "(n = 1).",
        md_table(header + ["first k within 2 points of full"], rows),
        figure_at(
            out_dir,
            draw,
            FIG_ORACLE,
            "Oracle score against k",
            bool(curves),
            lambda p: oracle_plot(curves, p),
        ),
    ]
    return Section(T_ORACLE, body)


def oracle_points(entry: Mapping) -> list[dict]:
    """The points of one task with an integer k, sorted by k."""
    pts = [p for p in dicts_in(entry.get("points")) if isinstance(p.get("k"), int)]
    return sorted(pts, key=lambda p: p["k"])


def oracle_ks(present: Iterable[int]) -> list[int]:
    """Every k when there are at most 8, else 1, 2, 4, ... 32 (those present) and the largest."""
    ks = sorted(set(present))
    if len(ks) <= 8:
        return ks
    picked = [k for k in SPECTRUM_KS if k in ks]
    return picked + ([ks[-1]] if ks[-1] not in picked else [])


def _oracle_row(task: str, entry: Mapping, points: Sequence[dict], ks: Sequence[int]) -> list:
    by_k = {p["k"]: p for p in points}
    full = as_float(entry.get("full_score"))
    cells = []
    for k in ks:
        p = by_k.get(k)
        score = as_float(p.get("score")) if p else None
        cells.append(
            DASH
            if score is None
            else f"{fmt_pct(score)} ({fmt_pct(as_float(p.get('captured')), 0)}%)"
        )
    first = _first_within(points, full, 0.02)
    metric = entry.get("metric", DASH)
    return [
        task,
        metric,
        fmt_pct(full),
        fmt_pct(as_float(entry.get("freeze_score"))),
        *cells,
        first,
    ]


def _first_within(points: Sequence[dict], full: float | None, margin: float) -> str:
    """The smallest k whose oracle score is at least full − margin; '> k_max' when none."""
    if full is None or not points:
        return DASH
    for p in points:
        score = as_float(p.get("score"))
        if score is not None and score >= full - margin:
            return str(p["k"])
    return f"> {points[-1]['k']}"
