"""What each subspace run did to the encoder: |V θ|, and θ against the trajectory's extent.

From runs.jsonl's `theta` and DIR/diagnostics.json's 'extent': coord_k / extent_k > 1 says θ
went along direction k beyond where the task's own fine-tuning trajectory ever went.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path

from experiments.report.diagnostics.cells import as_dict, figure_at, fmt_g, mean_of, ordered_tasks
from experiments.report.diagnostics.files import DIAGNOSTICS_FILE, PRODUCERS
from experiments.report.diagnostics.plots import theta_plot
from experiments.report.markdown import DASH, Section, md_table
from experiments.report.results import Record, Results
from experiments.report.stats import finite, stat

FIG_THETA = "fig_theta.png"
T_THETA = "Theta against the trajectory's extent"


def theta_label(r: Record) -> str:
    variant = r.get("variant")
    extra = f", {variant}" if variant not in (None, "-", "", "delta") else ""
    return f"{r['method']} (dim {r.get('dim')}{extra})"


def in_own_delta_basis(r: Record) -> bool:
    """Intrinsic runs in the delta mode of the task's own basis: the runs the extent (of the
    same task's trajectory, along the same directions) is measured for."""
    came = r.get("basis_from")
    return (
        r["method"] == "intrinsic"
        and r.get("variant") == "delta"
        and r.get("scope", "layer") == "layer"
        and not r.get("said")
        and came in (None, r["task"])
    )


def layer_ratios(theta: Mapping, extent: Mapping) -> dict[str, list[float | None]]:
    """layer -> coord_abs_k / extent_k per k (None where the extent is 0 or missing)."""
    out = {}
    for layer, info in theta.items():
        ext = extent.get(layer)
        if not isinstance(ext, list):
            continue
        coords = as_dict(info).get("coord_abs") or []
        out[layer] = [
            float(c) / float(e) if finite(c) and finite(e) and e > 0 else None
            for c, e in zip(coords, ext, strict=False)
        ]
    return out


def run_ratio(theta: Mapping, extent: Mapping) -> tuple[float | None, float | None]:
    """(mean over layers, max over layers) of max_k coord_abs_k / extent_k for one run."""
    maxima = [
        max(v for v in rs if v is not None)
        for rs in layer_ratios(theta, extent).values()
        if any(v is not None for v in rs)
    ]
    return (statistics.fmean(maxima), max(maxima)) if maxima else (None, None)


def section_theta(res: Results, diag: Mapping | None, out_dir: Path, draw: bool) -> Section | None:
    runs = [r for r in res.records if as_dict(r.get("theta"))]
    if not runs:
        return None
    extents = as_dict((diag or {}).get("extent"))
    groups: dict[tuple[str, str], list[Record]] = {}
    for r in runs:
        groups.setdefault((r["task"], theta_label(r)), []).append(r)
    tasks = ordered_tasks(res, {t for t, _ in groups})
    rows = [
        _theta_row(t, label, recs, as_dict(extents.get(t)))
        for t in tasks
        for (tt, label), recs in sorted(groups.items())
        if tt == t
    ]
    # ‖·‖ for norms: a '|' inside a cell would split the markdown table.
    header = ["task", "run", "‖V θ‖ (mean over layers)", "‖V θ‖ / ‖θ0‖"]
    header += ["max_k coord/extent (mean over layers)", "(max over layers)", "runs beyond (> 1)"]
    panels = _theta_panels(runs, extents)
    body = [_theta_intro(extents), md_table(header, rows)]
    body.append(
        figure_at(
            out_dir,
            draw,
            FIG_THETA,
            "coord_k / extent_k",
            bool(panels),
            lambda p: theta_plot(panels, p),
        )
    )
    return Section(T_THETA, body)


def _theta_intro(extents: Mapping) -> str:
    text = (
        "What each subspace run did to the encoder: |V θ|, the update in parameter space (mean "
        "over layers), and its size relative to θ0. For intrinsic runs in the task's own delta "
        "basis: coord_k / extent_k, how far θ moved along direction k (|coordinate k of the "
        "update|) against the furthest the task's own full fine-tuning trajectory went along "
        "it (max over recorded checkpoints of |(w_i − w_0)·v_k|); > 1: θ went beyond where "
        "fine-tuning itself went. Cells: mean ± std over seeds."
    )
    if not extents:
        text += (
            f" {DIAGNOSTICS_FILE} has no 'extent' (the {PRODUCERS[DIAGNOSTICS_FILE]} phase "
            "writes it): the ratio columns are empty."
        )
    return text


def _theta_row(task: str, label: str, recs: Sequence[Record], extent: Mapping) -> list:
    updates = stat(
        mean_of(as_dict(i).get("update_norm") for i in r["theta"].values()) for r in recs
    )
    rel = stat(
        mean_of(as_dict(i).get("relative_update") for i in r["theta"].values()) for r in recs
    )
    own = [r for r in recs if in_own_delta_basis(r)] if extent else []
    ratios = [run_ratio(r["theta"], extent) for r in own]
    means = stat(m for m, _ in ratios)
    maxes = stat(x for _, x in ratios)
    beyond = f"{sum(x > 1 for x in maxes.values)}/{maxes.n}" if maxes else DASH
    return [task, label, fmt_g(updates), fmt_g(rel), fmt_g(means), fmt_g(maxes), beyond]


def _theta_panels(runs: Sequence[Record], extents: Mapping) -> dict:
    """task -> 'dim d' -> (k, mean over layers and seeds of coord_k / extent_k)."""
    sums: dict[str, dict[str, dict[int, list[float]]]] = {}
    for r in runs:
        extent = as_dict(extents.get(r["task"]))
        if not extent or not in_own_delta_basis(r):
            continue
        cell = sums.setdefault(r["task"], {}).setdefault(f"dim {r.get('dim')}", {})
        for ratios in layer_ratios(r["theta"], extent).values():
            for k, v in enumerate(ratios, 1):
                if v is not None and v > 0:
                    cell.setdefault(k, []).append(v)
    return {
        t: {
            lab: sorted((k, statistics.fmean(v)) for k, v in ks.items())
            for lab, ks in d.items()
            if ks
        }
        for t, d in sums.items()
    }
