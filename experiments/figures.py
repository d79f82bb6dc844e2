"""The report's figures, drawn from plain numbers (no records, no files other than the PNG).

Why separate from the report: the report decides *what* is plotted (which runs, which means),
these functions only decide *how*, so each can be read and changed alone. Every figure is drawn
on a fresh Agg canvas (``Figure`` + ``FigureCanvasAgg``), never through pyplot: no global state,
no display needed, safe in worker processes and tests.

- ``fig2_transfer.png``: Figure 2's heatmap of the score drop with transferred bases.
- ``fig4_outliers.png``: Figure 4's |V theta| profiles, intrinsic above random.
- ``fig_dims.png``: Tables 5/6 as curves, score against dim per task.
- ``fig_d90.png``: every point of the d90 searches, score against d on a log axis.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from worker.finetune.outliers import plot_profiles

# (mean, std or None) of a score, in points (x100).
Point = tuple[float, float | None]


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _grid(n: int, cols: int = 2) -> tuple[int, int]:
    cols = max(1, min(cols, n))
    return math.ceil(n / cols), cols


def transfer_heatmap(
    drops: Sequence[Sequence[float | None]],
    rows: Sequence[str],
    cols: Sequence[str],
    path: str | os.PathLike,
    title: str = "",
) -> None:
    """Figure 2: rows are source bases (last row: random), columns target tasks, cells the
    drop full - score in points, annotated; missing cells are left blank."""
    data = np.array([[np.nan if v is None else v for v in row] for row in drops], dtype=float)
    fig = _figure(1.6 + 1.5 * len(cols), 1.0 + 0.6 * len(rows))
    ax = fig.subplots()
    finite = data[np.isfinite(data)]
    vmax = float(np.abs(finite).max()) if finite.size else 1.0
    image = ax.imshow(data, cmap="RdYlGn_r", vmin=-vmax, vmax=vmax, aspect="auto")
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            if np.isfinite(data[i, j]):
                ax.text(j, i, f"{data[i, j]:.1f}", ha="center", va="center", fontsize=9)
    ax.set_xticks(range(len(cols)), list(cols), rotation=20, ha="right")
    ax.set_yticks(range(len(rows)), list(rows))
    ax.set_xlabel("target task")
    ax.set_ylabel("source of the basis")
    fig.colorbar(image, ax=ax, label="drop vs full (points)")
    ax.set_title(title or "Score drop with transferred bases (lower is better)", fontsize=10)
    fig.savefig(path, dpi=120)


def outlier_profiles(
    panels: Mapping[str, Mapping[str, np.ndarray]], path: str | os.PathLike, title: str = ""
) -> None:
    """Figure 4: delegates to the worker's plot so the experiment and the CLI draw the same."""
    plot_profiles(panels, path, title)


def dims_plot(
    curves: Mapping[str, Mapping[int, Point]],
    random_line: Mapping[str, tuple[int, float]],
    path: str | os.PathLike,
    title: str = "",
) -> None:
    """Score against dim per task (intrinsic), error bars = std over seeds; the random basis
    at Table 1's dim is a dashed horizontal line labelled with its dim."""
    tasks = list(curves)
    nrows, ncols = _grid(len(tasks))
    fig = _figure(4.2 * ncols, 3.0 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, task in zip(axes, tasks, strict=False):
        points = sorted(curves[task].items())
        dims = [d for d, _ in points]
        means = [m for _, (m, _) in points]
        stds = [s or 0.0 for _, (_, s) in points]
        ax.errorbar(dims, means, yerr=stds, marker="o", capsize=3, label="intrinsic")
        if task in random_line:
            dim, score = random_line[task]
            ax.axhline(score, ls="--", color="C3", label=f"random (dim {dim})")
        ax.set_xscale("log", base=2)
        ax.set_xticks(dims, [str(d) for d in dims])
        ax.set_title(task, fontsize=10)
        ax.set_xlabel("dim per layer")
        ax.set_ylabel("dev score (x100)")
        ax.legend(fontsize=8)
    for ax in axes[len(tasks) :]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=120)


def d90_plot(
    curves: Mapping[str, Mapping[str, Sequence[tuple[int, float]]]],
    targets: Mapping[str, float],
    path: str | os.PathLike,
    title: str = "",
    labels: Mapping[str, str] | None = None,
) -> None:
    """One panel per task: score against d (log axis), one line per search method, and the
    d90 target as a horizontal line. `curves`: task -> method -> [(d, score x100)]."""
    tasks = list(curves)
    labels = labels or {}
    nrows, ncols = _grid(len(tasks))
    fig = _figure(4.2 * ncols, 3.0 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, task in zip(axes, tasks, strict=False):
        for i, (method, points) in enumerate(curves[task].items()):
            points = sorted(points)
            ax.plot(
                [d for d, _ in points],
                [s for _, s in points],
                marker="o",
                color=f"C{i % 10}",
                label=labels.get(method, method),
            )
        if task in targets:
            ax.axhline(targets[task], ls="--", color="0.3", label="target (90% of full)")
        ax.set_xscale("log")
        ax.set_title(task, fontsize=10)
        ax.set_xlabel("d")
        ax.set_ylabel("dev score (x100)")
        ax.legend(fontsize=7)
    for ax in axes[len(tasks) :]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=120)
