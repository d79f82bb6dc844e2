"""Runs below freeze: the count, the list, the median beside the mean."""

from __future__ import annotations

import math

from experiments.report.diagnostics.below_freeze import T_BELOW
from tests.experiments.report.diagnostics.helpers import (
    SEEDS,
    TASKS,
    build,
    freeze_runs,
    rec,
    row,
    text,
)


def below_records():
    rt, tr = "rotten_tomatoes", "trec6"
    return [
        # freeze of rt seed 0 is the mean of two runs: 0.60
        rec("freeze", rt, 0, 0.58, tag="a"),
        rec("freeze", rt, 0, 0.62, tag="b"),
        rec("freeze", rt, 1, 0.60),
        rec("freeze", rt, 2, 0.60),
        rec("freeze", rt, 2, 0.10, variant="other"),  # not a plain freeze run
        rec("intrinsic", rt, 0, 0.90, 4, "delta"),
        rec("intrinsic", rt, 1, 0.90, 4, "delta"),
        rec("intrinsic", rt, 2, 0.10, 4, "delta"),  # below
        rec("intrinsic", tr, 0, 0.80, 4, "delta"),  # no freeze for trec6
        rec("random", rt, 0, 0.59, 4),  # below
        rec("random", rt, 1, 0.70, 4),
        rec("random", rt, 2, math.nan, 4),  # not a number: below
        rec("transfer", rt, 0, 0.61, 4, "from-trec6", phase="transfer"),
        rec("intrinsic", rt, 0, 0.05, 4, "raw", phase="modes"),  # not Table-1-style
        rec("full", rt, 0, 0.05, None, "disable-outlier", phase="disable"),
    ]


def test_below_freeze_count_list_and_median(tmp_path):
    md = text(build(tmp_path, below_records())[T_BELOW])
    assert "3 of 7 Table-1-style runs (43%)" in md and "1 run has no freeze" in md
    # intrinsic: 0.9, 0.9, 0.1, 0.8 -> mean 67.5, median 85.0
    assert row(md, "intrinsic (dim 4)")[1:] == ["4", "1", "67.5 ± 38.6", "85.0", "-17.5"]
    # random: the NaN run is flagged but left out of mean and median
    assert row(md, "random (dim 4)")[1:] == ["3", "2", "64.5 ± 7.8", "64.5", "+0.0"]
    assert row(md, "transfer (dim 4)")[2] == "0"
    listed = [line.split("|")[1].strip() for line in md.splitlines() if "/s" in line]
    assert sorted(listed) == sorted(
        [
            "intrinsic/rotten_tomatoes/delta/d4/s2/",
            "random/rotten_tomatoes/-/d4/s0/",
            "random/rotten_tomatoes/-/d4/s2/",
        ]
    )
    assert row(md, "random/rotten_tomatoes/-/d4/s0/")[3:] == ["59.0", "60.0", "-1.0"]


def test_no_run_below_freeze_is_stated(tmp_path):
    records = freeze_runs(0.5) + [rec("random", t, s, 0.7, 4) for t in TASKS for s in SEEDS]
    md = text(build(tmp_path, records)[T_BELOW])
    assert "None of the 6 Table-1-style runs" in md
