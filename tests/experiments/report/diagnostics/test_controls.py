"""Table 3 both ways in the controls section: held at zero during fine-tuning and post hoc."""

from __future__ import annotations

from experiments.report.diagnostics.controls import T_CONTROLS
from tests.experiments.report.diagnostics.helpers import (
    KNOWLEDGE,
    MECHANICS,
    build,
    disable_runs,
    posthoc_file,
    row,
    text,
)


def test_table3_both_ways(tmp_path):
    records = disable_runs(KNOWLEDGE, held=1200)
    got = build(tmp_path, records, outliers={"posthoc": posthoc_file(MECHANICS)})
    md = text(got[T_CONTROLS])
    held, post = md.split("**Zeroed in the finished full model**")
    cells = row(held, "outlier: the outlier weights")
    assert cells[1:] == ["40.0 ± 1.0", "40.0 ± 1.0", "40.0", "1,200"]
    assert row(held, "none (full fine-tuning)")[1:4] == ["90.0 ± 0.0", "90.0 ± 0.0", "90.0"]
    assert row(held, "random_matched: random weights, the outliers' count per component")[1] == (
        "87.0 ± 0.0"
    )
    assert row(post, "outlier_non_ln: the outliers that are not LayerNorm gains")[1:] == [
        "86.0 ± 0.0",
        "86.0 ± 0.0",
        "86.0",
        "–",
    ]
    assert row(post, "random: as many uniformly random weights")[-1] == "500"
