"""The paper's numbers beside ours: each task's GLUE analog, or the paper's average."""

from __future__ import annotations

import pytest

from experiments import paper_numbers as paper


def test_paper_numbers_map_our_tasks_to_glue():
    assert paper.paper_value(paper.TABLE1["BERT"]["full"], "rotten_tomatoes") == (91.95, "SST-2")
    assert paper.paper_value(paper.TABLE1["BERT"]["intrinsic"], "trec6") == (81.21, "Avg.")
    value, label = paper.paper_value(paper.TABLE3["BERT"]["outlier"], "trec6")
    assert label.startswith("mean") and value == pytest.approx(
        sum(paper.TABLE3["BERT"]["outlier"].values()) / 8
    )
    assert paper.TABLE6_ROBERTA["QQP"][32] == 90.18
