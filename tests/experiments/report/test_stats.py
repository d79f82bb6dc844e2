"""The verdict rule at its bars (inclusive, lower or higher is better, no partly bar)."""

from __future__ import annotations

from experiments.report.stats import FAILS, HOLDS, NOT_RUN, PARTLY, verdict


def test_verdict_thresholds():
    assert verdict(None, 2, 5, lower_is_better=True) == NOT_RUN
    assert verdict(2.0, 2, 5, lower_is_better=True) == HOLDS
    assert verdict(4.9, 2, 5, lower_is_better=True) == PARTLY
    assert verdict(5.1, 2, 5, lower_is_better=True) == FAILS
    assert verdict(0.75, 0.75, 0.5) == HOLDS
    assert verdict(0.5, 0.75, 0.5) == PARTLY
    assert verdict(0.49, 0.75, 0.5) == FAILS
    assert verdict(4.0, 5) == FAILS  # no partly bar
