"""The oracle curve: which k are shown, the table, the figure, and figures off."""

from __future__ import annotations

from experiments.report.diagnostics.oracle import FIG_ORACLE, T_ORACLE, oracle_ks
from tests.experiments.report.diagnostics.helpers import (
    build,
    is_png,
    row,
    text,
)


def test_oracle_ks_all_when_few_else_powers_and_t():
    assert oracle_ks([3, 1, 2]) == [1, 2, 3]
    assert oracle_ks(range(1, 33)) == [1, 2, 4, 8, 16, 32]
    assert oracle_ks(range(1, 41)) == [1, 2, 4, 8, 16, 32, 40]
    assert oracle_ks([]) == []


def test_oracle_table_and_figure(tmp_path):
    scores = (0.60, 0.75, 0.79, 0.81, 0.82)
    diag = {
        "oracle": {
            "rotten_tomatoes": {
                "metric": "accuracy",
                "full_score": 0.80,
                "freeze_score": 0.55,
                "points": [
                    {"k": k, "captured": 0.8 + 0.05 * (k - 1), "residual": 0.1, "score": s}
                    for k, s in zip(range(1, 6), scores, strict=True)
                ],
            },
            "trec6": {"metric": "accuracy", "full_score": 0.9, "points": [{"k": 1, "score": 0.5}]},
        }
    }
    md = text(build(tmp_path, [], draw=True, diagnostics=diag)[T_ORACLE])
    cells = row(md, "rotten_tomatoes")
    assert cells[:4] == ["rotten_tomatoes", "accuracy", "80.0", "55.0"]
    assert cells[5] == "75.0 (85%)"
    assert cells[-1] == "3"  # 0.79 is the first within 2 points of 0.80
    assert row(md, "trec6")[-1] == "> 1" and row(md, "trec6")[3] == "–"
    assert row(md, "task")[4:9] == ["k = 1", "k = 2", "k = 3", "k = 4", "k = 5 (t)"]
    assert is_png(tmp_path / FIG_ORACLE)


def test_figures_off_writes_no_png(tmp_path):
    diag = {"oracle": {"trec6": {"full_score": 0.9, "points": [{"k": 1, "score": 0.5}]}}}
    md = text(build(tmp_path, [], draw=False, diagnostics=diag)[T_ORACLE])
    assert "not drawn (figures off)" in md
    assert not list(tmp_path.glob("*.png"))
