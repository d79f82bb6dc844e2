"""The learning-rate searches and the gate: the chosen lr marked, means over tasks, the split
named."""

from __future__ import annotations

from experiments.report.diagnostics.tuning import T_TUNING
from tests.experiments.report.diagnostics.helpers import (
    build,
    row,
    text,
)


def tuning_file(split="tune") -> dict:
    return {
        "split": split,
        "seed": 100,
        "tune_size": 300,
        "searches": {
            "head_lr": {
                "method": "freeze",
                "dim": None,
                "grid": [0.001, 0.003, 0.01],
                "scores": {
                    "0.001": {"rotten_tomatoes": 0.60, "trec6": 0.70},
                    "0.003": {"rotten_tomatoes": 0.64, "trec6": 0.76},
                    "0.01": {"rotten_tomatoes": 0.62, "trec6": 0.80},
                },
                "chosen": 0.003,
            },
            "theta_lr": {
                "method": "intrinsic",
                "dim": 32,
                "grid": [0.01, 0.1],
                "scores": {"0.01": {"rotten_tomatoes": 0.7}, "0.1": {"rotten_tomatoes": 0.8}},
                "chosen": 0.1,
            },
        },
        "gate": {
            "rotten_tomatoes": {
                "metric": "accuracy",
                "freeze": 0.64,
                "majority": 0.52,
                "margin": 0.02,
                "passed": True,
            },
            "trec6": {
                "metric": "accuracy",
                "freeze": 0.30,
                "majority": 0.29,
                "margin": 0.02,
                "passed": False,
            },
        },
    }


def test_tuning_tables_mark_the_choice_and_average_over_tasks(tmp_path):
    md = text(build(tmp_path, [], tuning=tuning_file())[T_TUNING])
    assert row(md, "0.003 **(chosen)**") == ["0.003 **(chosen)**", "64.0", "76.0", "70.0"]
    assert row(md, "0.001")[-1] == "65.0"
    assert "chosen 0.003 (mean 70.0); the grid's best mean is 71.0 at 0.01" in md
    assert "chosen 0.1, the grid's best mean (80.0)" in md
    assert "dim 32" in md
    assert "'tune' split (seed 100, 300 examples), never on the dev split" in md
    assert row(md, "rotten_tomatoes")[1:] == ["accuracy", "64.0", "52.0", "+12.0", "2.0", "yes"]
    assert "1 of 2 tasks passed" in md and "not passed: trec6" in md


def test_tuning_on_the_dev_split_is_called_optimistic(tmp_path):
    md = text(build(tmp_path, [], tuning=tuning_file("dev"))[T_TUNING])
    assert "optimistic" in md and "never on the dev split" not in md
