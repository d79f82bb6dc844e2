"""Learning curves: final and best point per run kind, the moving average, the figure."""

from __future__ import annotations

from experiments.report.diagnostics.curves import FIG_CURVES, T_CURVES, moving_average
from tests.experiments.report.diagnostics.helpers import (
    build,
    is_png,
    rec,
    row,
    text,
)


def curve(*values, step=10):
    return [{"step": i * step, "accuracy": v} for i, v in enumerate(values)]


def test_learning_curves_final_best_and_figure(tmp_path):
    losses = [1.0 - 0.01 * i for i in range(40)]
    records = [
        rec("full", "rotten_tomatoes", 0, 0.7, curve=curve(0.5, 0.8, 0.70), losses=losses),
        rec("full", "rotten_tomatoes", 1, 0.75, curve=curve(0.5, 0.9, 0.75), losses=losses),
        rec("intrinsic", "rotten_tomatoes", 0, 0.6, 4, "delta", curve=curve(0.5, 0.6)),
        rec("intrinsic", "rotten_tomatoes", 0, 0.6, 8, "delta", curve=curve(0.5, 0.7)),
        rec("random", "trec6", 1, 0.3, 4, curve=curve(0.2, 0.4, 0.3)),
        rec("random", "trec6", 2, 0.3, 4, curve=curve(0.2, 0.2, 0.3)),
        rec("intrinsic", "trec6", 0, 0.6, 2, "delta"),  # no curve: no row
    ]
    md = text(build(tmp_path, records, draw=True)[T_CURVES])
    assert row(md, "full")[1:] == [
        "rotten_tomatoes",
        "72.5 ± 3.5 (n=2)",
        "85.0 ± 7.1 (n=2)",
        "12.5 ± 3.5",
        "2",
    ]
    assert row(md, "intrinsic (dim 4)")[2:4] == ["60.0 (n=1)", "60.0 (n=1)"]
    assert row(md, "intrinsic (dim 8)")[2] == "70.0 (n=1)"
    assert row(md, "random (dim 4)")[1:5] == [
        "trec6",
        "30.0 ± 0.0 (n=2)",
        "35.0 ± 7.1 (n=2)",
        "5.0 ± 7.1",
    ]
    assert "intrinsic (dim 2)" not in md
    assert is_png(tmp_path / FIG_CURVES)


def test_moving_average():
    assert moving_average([1.0, 2.0, 3.0, 4.0], 2) == [(2.0, 1.5), (3.0, 2.5), (4.0, 3.5)]
    assert moving_average([]) == []
    assert moving_average([5.0]) == [(1.0, 5.0)]
