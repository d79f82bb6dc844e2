"""d90 (Aghajanyan et al. 2021): the smallest subspace dim reaching 90% of full, per method.

Why its own module: it reads d90.json (the searches, written by the d90 phase) rather than
runs.jsonl, counts degrees of freedom per method (d per layer, d, d + layers for SAID), and
sets apart the tasks where the frozen encoder alone already reaches the target.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from experiments import figures
from experiments import paper_numbers as paper
from experiments.report.columns import H, figure_line
from experiments.report.hints import join_hints
from experiments.report.markdown import DASH, Section, fmt_int, fmt_pts, md_table
from experiments.report.results import Results
from experiments.report.stats import Finding, finite, verdict

FIG_D90 = "fig_d90.png"
LAYERWISE_D90 = ("intrinsic", "random")
D90_LABELS = {
    "fastfood": "fastfood (DID, global d)",
    "said": "SAID (global d)",
    "intrinsic": "intrinsic (d per layer)",
    "random": "random (d per layer)",
}


def d90_searches(res: Results) -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for s in res.d90.get("searches") or []:
        if isinstance(s, dict) and s.get("task") and s.get("method"):
            out[(s["task"], s["method"])] = s
    return out


def dof(method: str, d: int | None, layers: int | None) -> int | None:
    """Degrees of freedom of a subspace of dim d: d per layer for layer-wise bases, d for a
    global one, plus one scale per layer for SAID."""
    if d is None:
        return None
    if method in LAYERWISE_D90:
        return d * layers if layers else None
    return d + (layers or 0) if method == "said" else d


def _d90_cell(s: dict[str, Any] | None, layers: int | None) -> str:
    if s is None:
        return DASH
    if s.get("d90") is None:
        return f"> {s['max_tried']}" if s.get("max_tried") else DASH
    k = dof(s["method"], s["d90"], layers)
    return f"{s['d90']} ({fmt_int(k)} dof)"


def _d90_methods(res: Results, searches: Mapping) -> list[str]:
    listed = list(res.cfg["d90_methods"])
    return listed + sorted({m for _, m in searches} - set(listed))


def _target(res: Results, searches: Mapping, task: str) -> float | None:
    for (t, _), s in searches.items():
        if t == task and finite(s.get("target")):
            return s["target"]
    full = (res.d90.get("full") or {}).get(task)
    return res.cfg["d90_fraction"] * full if finite(full) else None


def freeze_reaches(res: Results, searches: Mapping) -> dict[str, bool]:
    """task -> whether the frozen encoder alone already scores at least the d90 target."""
    out = {}
    for t in res.tasks:
        target, frozen = _target(res, searches, t), (res.d90.get("freeze") or {}).get(t)
        if target is not None and finite(frozen):
            out[t] = frozen >= target
    return out


def section_d90(res: Results, draw: bool) -> Section:
    searches, layers = d90_searches(res), res.cfg.get("layers")
    methods = _d90_methods(res, searches)
    reach = freeze_reaches(res, searches)
    full, frozen = res.d90.get("full") or {}, res.d90.get("freeze") or {}
    rows = []
    for t in res.tasks:
        target = _target(res, searches, t)
        rows.append(
            [
                t,
                fmt_pts(100 * full[t]) if finite(full.get(t)) else DASH,
                fmt_pts(100 * target) if target is not None else DASH,
                fmt_pts(100 * frozen[t]) if finite(frozen.get(t)) else DASH,
                {True: "yes", False: "no"}.get(reach.get(t), DASH),
                *(_d90_cell(searches.get((t, m)), layers) for m in methods),
            ]
        )
    labels = (D90_LABELS.get(m, m) for m in methods)
    header = ["task", "full", "target", "freeze", "freeze ≥ target", *labels]
    body = [
        f"d90: the smallest d whose score (mean over seeds {res.cfg['d90_seeds']}) reaches "
        f"{res.cfg['d90_fraction']:.0%} of full, found by bisection on a grid. Cells: d90 "
        "(degrees of freedom: d × layers for the layer-wise intrinsic and random bases, d for "
        f"fastfood, d + layers for SAID); '> m': not reached up to d = m. The h = {H} ensemble "
        "vectors count once (the model sees only their mean).",
        md_table(header, rows) if searches or full else "No d90 searches in d90.json yet.",
        _freeze_note(reach),
        "Paper numbers (random subspaces, Aghajanyan et al. 2021): "
        + "; ".join(
            f"{a['model']} {a['task']}: d90 = {a['d90']} ({a['source']})" for a in paper.AGHAJANYAN
        )
        + ". Both are hundreds to thousands of parameters.",
        _d90_figure(res, draw, searches),
    ]
    return Section("d90 (Aghajanyan et al. 2021)", body, [_d90_finding(res, searches, reach)])


def _freeze_note(reach: Mapping[str, bool]) -> str:
    tasks = [t for t, ok in reach.items() if ok]
    if not tasks:
        return ""
    return (
        f"Freeze alone (no encoder update; embeddings and head still train) already reaches "
        f"the target on {', '.join(tasks)}: there every d90 is trivially at most the smallest "
        "grid point, and the d90 numbers say nothing about the subspaces."
    )


def _d90_figure(res: Results, draw: bool, searches: Mapping) -> str:
    curves: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for (t, m), s in searches.items():
        points = [
            (p["d"], 100 * p["score"])
            for p in s.get("points") or []
            if p.get("d") and finite(p.get("score"))
        ]
        if points:
            curves.setdefault(t, {})[m] = points
    targets = {t: 100 * v for t in curves if (v := _target(res, searches, t)) is not None}
    return figure_line(
        res,
        draw,
        FIG_D90,
        "d90 searches",
        bool(curves),
        lambda p: figures.d90_plot(curves, targets, p, "Score against d", D90_LABELS),
    )


def d90_pairs(
    res: Results, searches: Mapping, reach: Mapping[str, bool]
) -> tuple[dict[str, tuple[float, float]], list[str]]:
    """task -> (intrinsic dof, fastfood dof), inf where the target was not reached, for the
    tasks with both searches; tasks where freeze alone reaches the target are set apart (there
    every d90 is its grid's smallest point, which compares grids, not subspaces)."""
    layers = res.cfg.get("layers")
    pairs, trivial = {}, []
    for t in res.tasks:
        a, b = searches.get((t, "intrinsic")), searches.get((t, "fastfood"))
        if a is None or b is None:
            continue
        if reach.get(t):
            trivial.append(t)
            continue
        pairs[t] = (
            dof("intrinsic", a.get("d90"), layers) or math.inf,
            dof("fastfood", b.get("d90"), layers) or math.inf,
        )
    return pairs, trivial


def _d90_finding(res: Results, searches: Mapping, reach: Mapping[str, bool]) -> Finding:
    pairs, trivial = d90_pairs(res, searches, reach)
    wins = [t for t, (a, b) in pairs.items() if a < b]
    share = len(wins) / len(pairs) if pairs else (0.0 if trivial else None)
    f = Finding(
        "d90",
        "the trajectory subspace needs far fewer parameters than a random one",
        "intrinsic d90 dof < fastfood d90 dof ('not reached' = ∞, so a task where neither "
        "reaches counts against) on all tasks with both searches where freeze alone stays "
        "below the target → holds; on some → partly",
        verdict(share, 1.0, 1 / len(pairs) if pairs else None),
        measured=f"intrinsic needs fewer on {len(wins)} of {len(pairs)} tasks"
        + (f" ({len(trivial)} set apart: freeze reaches the target)" if trivial else ""),
        paper="random subspaces: d90 of hundreds to thousands (200 for RoBERTa on MRPC)",
    )
    if share is None:
        f.reason = "needs intrinsic and fastfood d90 searches of the same task"
        return f
    lost = {t: v for t, v in pairs.items() if t not in wins}
    f.reason = join_hints(
        "intrinsic vs fastfood dof: "
        + ", ".join(f"{t} {_k(a)} vs {_k(b)}" for t, (a, b) in lost.items())
        if lost
        else "",
        f"freeze alone reaches the target on {', '.join(trivial)}, so every method's d90 there "
        "sits at its smallest grid point and those tasks cannot show the claim"
        if trivial
        else "",
    )
    return f


def _k(x: float) -> str:
    return "not reached" if math.isinf(x) else f"{int(x):,}"
