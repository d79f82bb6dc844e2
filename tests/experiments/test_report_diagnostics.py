"""The diagnostics sections of the report on hand-written experiment folders: the numbers in
the tables, the verdict rules at their thresholds, the figures, and missing or broken inputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from experiments.report import FAILS, HOLDS, NOT_RUN, PARTLY, Results, load_results
from experiments.report_diagnostics import (
    CONTROLS,
    FIG_CURVES,
    FIG_ORACLE,
    FIG_SPECTRUM,
    FIG_THETA,
    SPECTRUM_KS,
    T_BELOW,
    T_CONTROLS,
    T_CURVES,
    T_ORACLE,
    T_SPECTRUM,
    T_THETA,
    T_TUNING,
    diagnostic_sections,
    moving_average,
    oracle_ks,
)

TASKS = ("rotten_tomatoes", "trec6")
SEEDS = (0, 1, 2)
PNG = b"\x89PNG\r\n\x1a\n"


def rec(method, task, seed, score, dim=None, variant="-", phase="table1", **extra) -> dict:
    return {
        "id": f"{method}/{task}/{variant}/d{dim or 0}/s{seed}/{extra.pop('tag', '')}",
        "phase": phase,
        "task": task,
        "method": method,
        "seed": seed,
        "dim": dim,
        "metric": "accuracy",
        "score": score,
        "variant": variant,
        "scope": "layer",
        "said": False,
        **extra,
    }


def make_dir(tmp_path: Path, records, **files) -> Results:
    """DIR with config.json, runs.jsonl and the named side files (a dict is written as JSON,
    a str as it is)."""
    (tmp_path / "config.json").write_text(json.dumps({"tasks": TASKS, "seeds": SEEDS}))
    lines = "".join(json.dumps(r) + "\n" for r in records)
    (tmp_path / "runs.jsonl").write_text(lines)
    for name, content in files.items():
        text = content if isinstance(content, str) else json.dumps(content)
        (tmp_path / f"{name}.json").write_text(text)
    return load_results(tmp_path)


def build(tmp_path: Path, records, draw: bool = False, **files) -> dict:
    res = make_dir(tmp_path, records, **files)
    return {s.title: s for s in diagnostic_sections(res, tmp_path, draw)}


def text(section) -> str:
    return section.markdown()


def row(markdown: str, first: str) -> list[str]:
    """The cells of the first table row whose first cell is `first`."""
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first:
            return cells
    raise AssertionError(f"no row {first!r} in:\n{markdown}")


def header(markdown: str, first: str) -> list[str]:
    return row(markdown, first)


def is_png(path: Path) -> bool:
    return path.exists() and path.read_bytes()[:8] == PNG


def freeze_runs(score=0.6):
    return [rec("freeze", t, s, score) for t in TASKS for s in SEEDS]


# ============================================================================ gaps and breakage
def test_no_diagnostic_data_gives_no_sections(tmp_path):
    records = [rec("full", t, s, 0.8) for t in TASKS for s in SEEDS] + freeze_runs()
    assert build(tmp_path, records, draw=True) == {}
    assert not list(tmp_path.glob("*.png"))


def test_unreadable_files_say_so_and_name_their_phase(tmp_path):
    got = build(
        tmp_path,
        freeze_runs(),
        tuning="{not json",
        diagnostics="[1, 2]",
        outliers={"runs": "x", "posthoc": [1], "cross_task": {"a": 1}},
    )
    assert "could not be read" in text(got[T_TUNING]) and "tune phase" in text(got[T_TUNING])
    assert "holds a list" in text(got[T_SPECTRUM]) and "diagnostics phase" in text(got[T_ORACLE])
    controls = text(got[T_CONTROLS])
    assert "**Verdict T3 (" in controls and NOT_RUN in controls


def test_malformed_fields_do_not_crash(tmp_path):
    diag = {
        "spectrum": {"rotten_tomatoes": {"layers": "x"}, "trec6": [1]},
        "oracle": {"rotten_tomatoes": {"points": [{"k": "a"}, 3]}, "trec6": None},
        "extent": {"rotten_tomatoes": {"layer.0": "x"}},
    }
    tuning = {"searches": {"head_lr": {"grid": ["a", None], "scores": {"x": 1}}}, "gate": []}
    records = [
        rec("intrinsic", "rotten_tomatoes", 0, 0.7, 4, "delta", theta={"layer.0": 3}),
        rec("full", "rotten_tomatoes", 0, 0.8, curve=[{"step": "a"}, 5], losses=["x"]),
    ]
    got = build(tmp_path, records, draw=True, diagnostics=diag, tuning=tuning)
    assert T_TUNING in got and T_SPECTRUM in got and T_THETA in got
    assert all(isinstance(s.markdown(), str) for s in got.values())


def test_sections_come_in_report_order(tmp_path):
    records = [
        *freeze_runs(),
        rec("intrinsic", "rotten_tomatoes", 0, 0.7, 4, "delta", curve=[{"step": 1, "accuracy": 1}]),
        rec("random", "trec6", 0, 0.7, 4, theta={"layer.0": {"update_norm": 1.0}}),
        rec("full", "trec6", 0, 0.9, None, "disable-outlier", held_zero=10),
    ]
    diag = {
        "spectrum": {"trec6": {"layers": [{"layer": "l", "energy": [1.0]}]}},
        "oracle": {"trec6": {"points": [{"k": 1, "score": 0.5, "captured": 0.5}]}},
    }
    tuning = {"searches": {}, "gate": {"trec6": {"passed": True}}}
    res = make_dir(tmp_path, records, diagnostics=diag, tuning=tuning)
    titles = [s.title for s in diagnostic_sections(res, tmp_path, False)]
    assert titles == [T_TUNING, T_SPECTRUM, T_ORACLE, T_CURVES, T_THETA, T_BELOW, T_CONTROLS]


def test_modes_and_ks_match_the_worker():
    from worker.finetune import diagnostics
    from worker.finetune.outlier_controls import CONTROL_MODES

    assert sorted(CONTROLS) == sorted(CONTROL_MODES)
    assert SPECTRUM_KS == diagnostics.SPECTRUM_KS


# ============================================================================ 1. tuning
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


# ============================================================================ 2. spectrum
def test_spectrum_mean_and_min_over_layers_and_figure(tmp_path):
    layer = {"rank": 2, "singular_values": [3.0, 1.0], "total_energy": 10.0}
    diag = {
        "spectrum": {
            "rotten_tomatoes": {
                "mode": "delta",
                "layers": [
                    {
                        **layer,
                        "layer": "layer.0",
                        "cumulative": [{"k": 1, "captured": 0.9}, {"k": 2, "captured": 0.95}],
                        "captured": 0.95,
                    },
                    {
                        **layer,
                        "layer": "layer.1",
                        # the worker's own key name
                        "cumulative_energy": [
                            {"k": 1, "captured": 0.7},
                            {"k": 2, "captured": 0.85},
                        ],
                        "captured": 0.85,
                    },
                ],
            },
            # no cumulative list: summed from the per-direction energy
            "trec6": {"mode": "raw", "layers": [{"layer": "layer.0", "energy": [0.5, 0.3, 0.2]}]},
        }
    }
    md = text(build(tmp_path, [], draw=True, diagnostics=diag)[T_SPECTRUM])
    assert row(md, "rotten_tomatoes") == [
        "rotten_tomatoes",
        "delta",
        "2",
        "80.0 (70.0)",
        "90.0 (85.0)",
        "–",
        "–",
        "–",
        "–",
        "90.0 (85.0)",
    ]
    assert row(md, "trec6")[3:6] == ["50.0 (50.0)", "80.0 (80.0)", "–"]
    assert row(md, "trec6")[-1] == "100.0 (100.0)"  # all kept: the energy's sum
    assert "raw-mode basis" in md and "no seed spread (n = 1)" in md
    assert is_png(tmp_path / FIG_SPECTRUM) and f"]({FIG_SPECTRUM})" in md


# ============================================================================ 3. oracle
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


# ============================================================================ 4. curves
def curve(*values, step=10):
    return [{"step": i * step, "accuracy": v} for i, v in enumerate(values)]


def test_learning_curves_final_best_and_figure(tmp_path):
    losses = [1.0 - 0.01 * i for i in range(40)]
    records = [
        rec("full", "rotten_tomatoes", 0, 0.7, curve=curve(0.5, 0.8, 0.70), losses=losses),
        rec("full", "rotten_tomatoes", 1, 0.75, curve=curve(0.5, 0.9, 0.75), losses=losses),
        rec("intrinsic", "rotten_tomatoes", 0, 0.6, 4, "delta", curve=curve(0.5, 0.6)),
        rec("intrinsic", "rotten_tomatoes", 0, 0.6, 8, "delta", curve=curve(0.5, 0.7)),
        rec("random", "trec6", 1, 0.3, 4, curve=curve(0.2, 0.4, 0.3)),
        rec("random", "trec6", 2, 0.3, 4, curve=curve(0.2, 0.2, 0.3)),
        rec("intrinsic", "trec6", 0, 0.6, 2, "delta"),  # no curve: no row
    ]
    md = text(build(tmp_path, records, draw=True)[T_CURVES])
    assert row(md, "full")[1:] == [
        "rotten_tomatoes",
        "72.5 ± 3.5 (n=2)",
        "85.0 ± 7.1 (n=2)",
        "12.5 ± 3.5",
        "2",
    ]
    assert row(md, "intrinsic (dim 4)")[2:4] == ["60.0 (n=1)", "60.0 (n=1)"]
    assert row(md, "intrinsic (dim 8)")[2] == "70.0 (n=1)"
    assert row(md, "random (dim 4)")[1:5] == [
        "trec6",
        "30.0 ± 0.0 (n=2)",
        "35.0 ± 7.1 (n=2)",
        "5.0 ± 7.1",
    ]
    assert "intrinsic (dim 2)" not in md
    assert is_png(tmp_path / FIG_CURVES)


def test_moving_average():
    assert moving_average([1.0, 2.0, 3.0, 4.0], 2) == [(2.0, 1.5), (3.0, 2.5), (4.0, 3.5)]
    assert moving_average([]) == []
    assert moving_average([5.0]) == [(1.0, 5.0)]


# ============================================================================ 5. theta
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


# ============================================================================ 6. below freeze
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


# ============================================================================ 7. controls
def disable_runs(scores: dict, jitter=(-0.01, 0.0, 0.01), held=1000) -> list[dict]:
    """full runs with each control held at zero: scores[mode] on every task, plus a per-seed
    jitter on the outlier run (so the per-seed gaps spread by 1 point)."""
    out = []
    for t in TASKS:
        for s, j in zip(SEEDS, jitter, strict=True):
            out.append(rec("full", t, s, scores.get("none", 0.9), phase="table1"))
            for mode, v in scores.items():
                if mode != "none":
                    extra = j if mode == "outlier" else 0.0
                    variant = f"disable-{mode}"
                    out.append(
                        rec("full", t, s, v + extra, None, variant, "disable", held_zero=held)
                    )
    return out


def findings(section) -> dict:
    return {f.key: f for f in section.findings}


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


BASE = {"none": 0.90, "random": 0.88, "outlier": 0.40, "ln_gains": 0.30}
KNOWLEDGE = {**BASE, "outlier_non_ln": 0.45, "random_matched": 0.87, "outlier_ln": 0.86}
BOTH = {**BASE, "outlier_non_ln": 0.60, "random_matched": 0.87, "outlier_ln": 0.50}
MECHANICS = {**BASE, "outlier_non_ln": 0.86, "random_matched": 0.87, "outlier_ln": 0.42}
NO_COLLAPSE = {**KNOWLEDGE, "outlier": 0.86}


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


def posthoc_file(scores: dict) -> dict:
    return {
        t: {str(s): {**scores, "counts": {"outlier": 500, "random": 500}} for s in SEEDS}
        for t in TASKS
    }


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


def test_figures_off_writes_no_png(tmp_path):
    diag = {"oracle": {"trec6": {"full_score": 0.9, "points": [{"k": 1, "score": 0.5}]}}}
    md = text(build(tmp_path, [], draw=False, diagnostics=diag)[T_ORACLE])
    assert "not drawn (figures off)" in md
    assert not list(tmp_path.glob("*.png"))
