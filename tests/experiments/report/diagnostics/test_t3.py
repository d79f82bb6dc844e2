"""Findings T3 and T3c at their thresholds, on the runs held at zero or zeroed post hoc."""

from __future__ import annotations

import pytest

from experiments.report.diagnostics.controls import T_CONTROLS
from experiments.report.stats import FAILS, HOLDS, NOT_RUN, PARTLY
from tests.experiments.report.diagnostics.helpers import (
    BOTH,
    KNOWLEDGE,
    MECHANICS,
    NO_COLLAPSE,
    SEEDS,
    TASKS,
    build,
    disable_runs,
    findings,
    posthoc_file,
)


@pytest.mark.parametrize(
    ("gap", "expected"),
    [(25, HOLDS), (20, HOLDS), (10, PARTLY), (5, PARTLY), (2, FAILS)],
)
def test_t3_verdict_follows_the_held_gap(tmp_path, gap, expected):
    records = disable_runs({"random": 0.85, "outlier": 0.85 - gap / 100})
    # post hoc says the opposite: the verdict is on the runs held during fine-tuning
    post = {t: {str(s): {"random": 0.8, "outlier": 0.8} for s in SEEDS} for t in TASKS}
    got = build(tmp_path, records, outliers={"posthoc": post})
    t3 = findings(got[T_CONTROLS])["T3"]
    assert t3.verdict == expected
    assert f"random − outlier = {gap:.1f} points (per seed {gap:.1f} ± 1.0, n = 3 seeds" in (
        t3.measured
    )
    assert "zeroed post hoc: 0.0 points" in t3.measured


@pytest.mark.parametrize(
    ("scores", "expected", "hint"),
    [
        (KNOWLEDGE, HOLDS, ""),
        (BOTH, PARTLY, "already costs 38.0 of the 48.0 points"),
        (MECHANICS, FAILS, "cost only 1.0 points more than random weights"),
        (NO_COLLAPSE, FAILS, "little collapse to explain"),
    ],
)
def test_t3c_tells_knowledge_from_mechanics(tmp_path, scores, expected, hint):
    got = build(tmp_path, disable_runs(scores, jitter=(0.0, 0.0, 0.0)))
    t3c = findings(got[T_CONTROLS])["T3c"]
    assert t3c.verdict == expected
    assert t3c.measured.startswith("judged on the runs held at zero during fine-tuning")
    assert hint in t3c.reason
    knowledge = 100 * (scores["random_matched"] - scores["outlier_non_ln"])
    assert f"outlier_non_ln = {knowledge:.1f} points" in t3c.measured


def test_t3c_falls_back_to_posthoc_and_needs_its_controls(tmp_path):
    got = build(tmp_path, [], outliers={"posthoc": posthoc_file(KNOWLEDGE)})
    f = findings(got[T_CONTROLS])
    assert f["T3c"].verdict == HOLDS and f["T3c"].measured.startswith(
        "judged on the runs zeroed post hoc"
    )
    assert f["T3"].verdict == NOT_RUN  # T3 is judged on held runs only

    partial = {k: v for k, v in KNOWLEDGE.items() if k != "random_matched"}
    got = build(tmp_path, [], outliers={"posthoc": posthoc_file(partial)})
    assert findings(got[T_CONTROLS])["T3c"].verdict == NOT_RUN
