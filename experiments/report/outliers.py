"""Outlier dimensions of the subspace update (the paper's Table 4 and Figure 4).

Why its own module: besides runs.jsonl it reads the run folders (outliers.json for the
positions, outliers.npz for the profiles), which may be gone; each part then says so instead
of failing. Finding F4: outliers appear in the intrinsic subspace, not the random one.
"""

from __future__ import annotations

import json
import os
import statistics
import zipfile
from pathlib import Path
from typing import Any

from experiments import figures
from experiments import paper_numbers as paper
from experiments.report.columns import figure_line
from experiments.report.hints import join_hints
from experiments.report.markdown import Section, fmt, md_table
from experiments.report.results import Record, Results, Selector
from experiments.report.selectors import intrinsic_at, outlier_value, random_at
from experiments.report.stats import Finding, verdict
from storage.errors import NotFound
from worker.finetune.outliers import load_arrays

FIG4 = "fig4_outliers.png"


def section_outliers(res: Results, draw: bool) -> Section:
    dim = res.cfg["dim"]
    intr, rnd = intrinsic_at(dim), random_at(dim)
    cols = [
        ("3σ fraction (%)", "total_fraction", 100.0, 2),
        ("excess over Gaussian", "excess_mean", 1.0, 2),
        ("excess kurtosis", "kurtosis_mean", 1.0, 1),
    ]
    rows = []
    for t in res.tasks:
        cells = []
        for _, key, scale, digits in cols:
            for sel in (intr, rnd):
                s = res.stat(t, sel, outlier_value(key))
                cells.append(fmt(s, res.n_seeds, scale, digits))
        rows.append([t, *cells])
    header = ["task"] + [f"{kind} {c[0]}" for c in cols for kind in ("intrinsic", "random")]
    gauss = paper.GAUSSIAN_3SIGMA_FRACTION
    body = [
        f"Outlier dimensions of V θ at dim {dim} (mean ± std over seeds). A Gaussian puts "
        f"{gauss:.2%} of its entries beyond 3σ, so the count alone does not show spikes: "
        "'excess' is the count over that Gaussian expectation (1 = Gaussian), kurtosis the "
        f"heavy tail (0 = Gaussian). Paper: about {paper.OUTLIER_FRACTION:.1%} of encoder "
        "parameters are 3σ outliers in the intrinsic subspace.",
        md_table(header, rows),
        _table4(res),
        _fig4(res, draw),
    ]
    return Section("Outlier dimensions (Table 4, Figure 4)", body, [_f4(res)])


def _first_with(res: Results, sel: Selector, filename: str) -> Record | None:
    """The first-seed run of the first task (then later seeds) whose folder has `filename`."""
    for seed in res.seeds:
        for t in res.tasks:
            for r in res.select(sel, t):
                if r.get("seed") == seed and _has(r, filename):
                    return r
    return None


def _has(r: Record, filename: str) -> bool:
    run_dir = r.get("run_dir")
    return bool(run_dir) and os.path.exists(os.path.join(run_dir, filename))


def _table4(res: Results) -> str:
    first = res.seeds[0]
    intr = intrinsic_at(res.cfg["dim"])
    source = _first_with(res, lambda r: intr(r) and r.get("seed") == first, "outliers.json")
    if source is None:
        return (
            f"Table 4 (positions): not available, no intrinsic run (dim {res.cfg['dim']}, seed "
            f"{first}) still has its outliers.json in its run folder."
        )
    try:
        table4 = json.loads(Path(source["run_dir"], "outliers.json").read_text()).get("table4")
    except (OSError, json.JSONDecodeError, AttributeError):
        table4 = None
    if not table4:
        return f"Table 4 (positions): {source['run_dir']}/outliers.json has no table4."
    ours = [
        [row["component"], ", ".join(map(str, row["layers"])), ", ".join(map(str, row["counts"]))]
        for row in table4
    ]
    theirs = [
        [row["component"], ", ".join(map(str, row["layers"])), ", ".join(map(str, row["counts"]))]
        for row in paper.TABLE4_BERT
    ]
    return "\n\n".join(
        [
            f"Table 4: positions of each layer's top 10 outliers, intrinsic run `{source['id']}`:",
            md_table(["component", "layers", "outliers per layer"], ours),
            "Paper (BERT on MRPC, layers numbered from 1):",
            md_table(["component", "layers", "outliers per layer"], theirs),
        ]
    )


def _profiles(r: Record | None) -> dict[str, Any] | None:
    if r is None or not _has(r, "outliers.npz"):
        return None
    # Imported here: the worker's outliers module pulls in torch, which only Figure 4 needs.
    try:
        arrays = load_arrays(r["run_dir"])
    except (NotFound, OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None
    return {layer: a["profile"] for layer, a in arrays.items() if "profile" in a} or None


def _fig4(res: Results, draw: bool) -> str:
    dim = res.cfg["dim"]
    intr = _first_with(res, intrinsic_at(dim), "outliers.npz")
    if intr is None:
        return "Figure 4: not drawn, no intrinsic run folder with outliers.npz is left."
    rnd = next(
        (r for r in res.select(random_at(dim), intr["task"]) if r.get("seed") == intr["seed"]),
        None,
    )
    panels = {}
    for kind, r in (("intrinsic", intr), ("random", rnd)):
        prof = _profiles(r)
        if prof is not None:
            panels[f"{kind} ({r['task']}, seed {r['seed']})"] = prof
    return figure_line(
        res,
        draw,
        FIG4,
        "Figure 4",
        bool(panels),
        lambda p: figures.outlier_profiles(panels, p, f"max |V θ| per bin, dim {dim}"),
    )


def _f4(res: Results) -> Finding:
    dim = res.cfg["dim"]
    value = outlier_value("excess_mean")
    intr = res.per_task(intrinsic_at(dim), value)
    rnd = res.per_task(random_at(dim), value)
    common = [t for t in intr if t in rnd]
    wins = [t for t in common if intr[t].mean > 1.5 * rnd[t].mean]
    share = len(wins) / len(common) if common else None
    f = Finding(
        "F4",
        "outliers appear in the intrinsic subspace, not the random one",
        "intrinsic excess (3σ count / Gaussian expectation) > 1.5 × random's on all tasks → "
        "holds; on some → partly",
        verdict(share, 1.0, 1 / len(common) if common else None),
        measured=f"on {len(wins)} of {len(common)} tasks",
        paper="outlier patterns in every layer with the intrinsic basis, none with a random one",
    )
    if share is None:
        f.reason = "needs intrinsic and random runs with their outlier summaries"
        return f
    pairs = ", ".join(f"{t} {intr[t].mean:.2f} vs {rnd[t].mean:.2f}" for t in common)
    f.reason = join_hints(
        f"excess intrinsic vs random: {pairs}",
        _tail_hint(statistics.fmean(intr[t].mean for t in common)),
    )
    return f


def _tail_hint(excess: float) -> str:
    if excess < 0.8:
        return (
            "the intrinsic update has fewer 3σ entries than a Gaussian (excess < 1, a light "
            "tail): no spikes at this dim and step budget"
        )
    if excess < 1.2:
        return (
            "the intrinsic update's 3σ count is close to a Gaussian's (excess ≈ 1): no spikes "
            "at this dim and step budget"
        )
    return ""
