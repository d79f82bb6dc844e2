"""Cell formats: mean ± std ×100, one value alone, (n=k) for missing seeds, – for none."""

from __future__ import annotations

from experiments.report.markdown import fmt
from experiments.report.stats import Stat


def test_fmt_mean_std_and_n():
    assert fmt(Stat((0.80, 0.82, 0.84)), 3) == "82.0 ± 2.0"  # sample std (ddof=1)
    assert fmt(Stat((0.5,)), 1) == "50.0"
    assert fmt(Stat((0.80, 0.84)), 3) == "82.0 ± 2.8 (n=2)"
    assert fmt(None, 3) == "–"
