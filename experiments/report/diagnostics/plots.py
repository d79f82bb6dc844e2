"""The diagnostics' figures: spectrum, oracle curve, learning curves, θ against the extent.

As experiments/figures.py for the paper's figures: each is drawn on a fresh Agg canvas from
plain numbers (no records, no files but the PNG), never through pyplot, so the sections decide
what is plotted and these functions only how.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from experiments.report.stats import finite


def _canvas(width: float, height: float) -> Figure:
    # A fresh Agg canvas per figure, as experiments/figures.py: no pyplot state, no display.
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _axes(fig: Figure, n: int, cols: int = 2) -> list:
    cols = max(1, min(cols, n))
    rows = math.ceil(n / cols)
    axes = list(fig.subplots(rows, cols, squeeze=False).ravel())
    for ax in axes[n:]:
        ax.set_visible(False)
    return axes[:n]


def spectrum_plot(panels: Mapping[str, Mapping[str, Sequence[float]]], path: Path) -> None:
    """One panel per task: σ_k / σ_1 against k, one line per layer, log y."""
    n = len(panels)
    fig = _canvas(4.2 * min(2, n), 3.0 * math.ceil(n / 2))
    for ax, (task, layers) in zip(_axes(fig, n), panels.items(), strict=True):
        for i, (layer, ratios) in enumerate(layers.items()):
            ks = range(1, len(ratios) + 1)
            ax.plot(ks, [max(r, 1e-12) for r in ratios], color=f"C{i % 10}", label=layer, lw=1)
        ax.set_yscale("log")
        ax.set_title(task, fontsize=10)
        ax.set_xlabel("k")
        ax.set_ylabel("σ_k / σ_1")
        ax.legend(fontsize=6)
    fig.savefig(path, dpi=120)


def oracle_plot(curves: Mapping[str, Mapping[str, Any]], path: Path) -> None:
    """One panel per task: oracle score against k (full and freeze as lines), and
    |P_k δ| / |δ| on a twin axis."""
    n = len(curves)
    fig = _canvas(4.6 * min(2, n), 3.2 * math.ceil(n / 2))
    for ax, (task, c) in zip(_axes(fig, n), curves.items(), strict=True):
        pts = [p for p in c["points"] if finite(p.get("score"))]
        ax.plot([p["k"] for p in pts], [100 * p["score"] for p in pts], "o-", label="oracle")
        for key, style, label in (("full_score", "-", "full"), ("freeze_score", ":", "freeze")):
            if finite(c.get(key)):
                ax.axhline(100 * c[key], ls=style, color="0.3", label=label)
        ax.set_xscale("log", base=2)
        ax.set_title(task, fontsize=10)
        ax.set_xlabel("k (directions per layer)")
        ax.set_ylabel("dev score (x100)")
        ax.legend(fontsize=7, loc="lower right")
        cap = [p for p in c["points"] if finite(p.get("captured"))]
        twin = ax.twinx()
        twin.plot([p["k"] for p in cap], [100 * p["captured"] for p in cap], "s--", color="C1")
        twin.set_ylabel("|P_k δ| / |δ| (%)", color="C1")
    fig.savefig(path, dpi=120)


def curves_plot(panels: Mapping[str, Mapping[str, Mapping[str, list]]], path: Path) -> None:
    """Per task a row of two panels: training loss (moving average) and held-out score
    against step, one line per run kind."""
    n = len(panels)
    fig = _canvas(9.0, 3.0 * n)
    axes = fig.subplots(n, 2, squeeze=False)
    for (ax_loss, ax_score), (task, runs) in zip(axes, panels.items(), strict=True):
        for i, (label, series) in enumerate(runs.items()):
            for ax, key in ((ax_loss, "loss"), (ax_score, "score")):
                pts = series[key]
                if pts:
                    xs, ys = zip(*pts, strict=True)
                    ax.plot(xs, ys, color=f"C{i % 10}", label=label, lw=1)
        ax_loss.set_title(f"{task}: training loss", fontsize=10)
        ax_score.set_title(f"{task}: held-out score", fontsize=10)
        ax_loss.set_xlabel("step")
        ax_score.set_xlabel("step")
        ax_score.set_ylabel("score (x100)")
        ax_score.legend(fontsize=7)
    fig.savefig(path, dpi=120)


def theta_plot(panels: Mapping[str, Mapping[str, Sequence[tuple[int, float]]]], path: Path) -> None:
    """One panel per task: coord_k / extent_k against k, one line per dim, log y; the dashed
    line at 1 is the trajectory's own reach."""
    n = len(panels)
    fig = _canvas(4.2 * min(2, n), 3.0 * math.ceil(n / 2))
    for ax, (task, lines) in zip(_axes(fig, n), panels.items(), strict=True):
        for i, (label, pts) in enumerate(lines.items()):
            ax.plot(
                [k for k, _ in pts],
                [v for _, v in pts],
                "o-",
                ms=3,
                color=f"C{i % 10}",
                label=label,
            )
        ax.axhline(1.0, ls="--", color="0.3", label="trajectory's extent")
        ax.set_yscale("log")
        ax.set_title(task, fontsize=10)
        ax.set_xlabel("k")
        ax.set_ylabel("coord_k / extent_k (mean over layers)")
        ax.legend(fontsize=7)
    fig.savefig(path, dpi=120)
