"""θ against the trajectory's extent: the ratios, which runs they apply to, the figure."""

from __future__ import annotations

from experiments.report.diagnostics.theta import FIG_THETA, T_THETA
from tests.experiments.report.diagnostics.helpers import (
    build,
    is_png,
    rec,
    row,
    text,
)


def theta(l0, l1, u0=1.0, u1=3.0):
    return {
        "layer.0": {"theta_abs": l0, "coord_abs": l0, "update_norm": u0, "relative_update": 0.01},
        "layer.1": {"theta_abs": l1, "coord_abs": l1, "update_norm": u1, "relative_update": 0.03},
    }


def test_theta_against_extent(tmp_path):
    rt = "rotten_tomatoes"
    records = [
        # ratios: layer.0 [2, 0.5] -> 2; layer.1 [0.5, 3] -> 3: mean 2.5, max 3
        rec("intrinsic", rt, 0, 0.7, 2, "delta", theta=theta([2.0, 0.5], [1.0, 3.0])),
        # ratios: layer.0 [0.5, 0.5]; layer.1 [0.25, 0.5]: mean 0.5, max 0.5
        rec("intrinsic", rt, 1, 0.7, 2, "delta", theta=theta([0.5, 0.5], [0.5, 0.5], 3.0, 5.0)),
        rec("random", rt, 0, 0.6, 2, theta=theta([9.0, 9.0], [9.0, 9.0])),
        rec("intrinsic", rt, 0, 0.6, 2, "raw", theta=theta([9.0, 9.0], [9.0, 9.0])),
    ]
    diag = {"extent": {rt: {"layer.0": [1.0, 1.0], "layer.1": [2.0, 1.0]}}}
    md = text(build(tmp_path, records, draw=True, diagnostics=diag)[T_THETA])
    # |V theta| over layers: 2.0 and 4.0 -> 3 ± 1.41; ratios 2.5, 0.5 -> 1.5 ± 1.41
    assert row(md, rt)[1:] == [
        "intrinsic (dim 2)",
        "3 ± 1.41",
        "0.02 ± 0",
        "1.5 ± 1.41",
        "1.75 ± 1.77",
        "1/2",
    ]
    assert len(row(md, "task")) == 7  # no '|' inside a header cell
    cells = [line for line in md.splitlines() if "random (dim 2)" in line][0]
    assert cells.endswith("| – | – | – |")
    assert "intrinsic (dim 2, raw)" in md
    assert is_png(tmp_path / FIG_THETA)


def test_theta_without_extent_says_where_it_comes_from(tmp_path):
    records = [rec("intrinsic", "trec6", 0, 0.7, 2, "delta", theta=theta([1.0], [1.0]))]
    md = text(build(tmp_path, records, draw=True)[T_THETA])
    assert "has no 'extent'" in md and "diagnostics phase" in md
    assert "coord_k / extent_k: not drawn" in md
