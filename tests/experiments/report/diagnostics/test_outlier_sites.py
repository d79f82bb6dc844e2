"""Where the outliers sit: per component, against θ0's largest entries, across tasks."""

from __future__ import annotations

from experiments.report.diagnostics.controls import T_CONTROLS
from tests.experiments.report.diagnostics.helpers import (
    build,
    row,
    text,
)


def test_where_the_outliers_sit(tmp_path):
    def run(enrich, top, ln):
        return {
            "count": 5000,
            "fraction": 0.003,
            "enrichment": [
                {
                    "component": "layernorm.gain",
                    "count": 100,
                    "fraction": 0.02,
                    "params": 10,
                    "share": 0.002,
                    "enrichment": enrich,
                    "expected": 10,
                    "z": 30.0,
                },
                {
                    "component": "ffn.in",
                    "count": 4900,
                    "fraction": 0.98,
                    "params": 5000,
                    "share": 0.998,
                    "enrichment": 0.98,
                    "expected": 4990,
                    "z": -1.0,
                },
            ],
            "theta0_top_overlap": {"fraction": top, "expected": 0.003},
            "ln_gain_share": ln,
            "ln_gain_param_share": 0.0009,
        }

    outliers = {
        "sigma": 3.0,
        "source": "intrinsic, raw basis, plain V theta (the paper's protocol)",
        "runs": {"rotten_tomatoes": {"0": run(10, 0.8, 0.1), "1": run(20, 0.6, 0.3)}},
        "cross_task": [
            {
                "a": "rotten_tomatoes",
                "b": "trec6",
                "seed": 0,
                "jaccard": 0.7,
                "expected_jaccard": 0.0015,
            },
            {
                "a": "rotten_tomatoes",
                "b": "trec6",
                "seed": 1,
                "jaccard": 0.5,
                "expected_jaccard": 0.0015,
            },
        ],
    }
    md = text(build(tmp_path, [], outliers=outliers)[T_CONTROLS])
    assert "3.0σ entries of V θ (intrinsic, raw basis" in md
    assert row(md, "layernorm.gain")[1:] == [
        "0.20",
        "2.00 ± 0.00",
        "100 / 10",
        "15 ± 7.07",
        "30 ± 0",
    ]
    assert row(md, "rotten_tomatoes")[1:] == [
        "2",
        "5,000 ± 0",
        "0.30 ± 0.00",
        "70.0 ± 14.1",
        "0.30",
        "20.0 ± 14.1",
        "0.09",
    ]
    jaccard = [line for line in md.splitlines() if "| trec6 | 0.6" in line]
    assert jaccard and jaccard[0].endswith("| 0.6 ± 0.141 | 2 | 0.0015 | 400× |")
    assert "No disable-* runs in runs.jsonl yet" in md and "No 'posthoc' in outliers" in md
