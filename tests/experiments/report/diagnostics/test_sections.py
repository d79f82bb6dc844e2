"""Which diagnostics sections appear, in which order, and what missing, unreadable or malformed
inputs give (never a crash)."""

from __future__ import annotations

from experiments.report.diagnostics.below_freeze import T_BELOW
from experiments.report.diagnostics.contrast import CONTROLS
from experiments.report.diagnostics.controls import T_CONTROLS
from experiments.report.diagnostics.curves import T_CURVES
from experiments.report.diagnostics.files import SPECTRUM_KS
from experiments.report.diagnostics.oracle import T_ORACLE
from experiments.report.diagnostics.sections import diagnostic_sections
from experiments.report.diagnostics.spectrum import T_SPECTRUM
from experiments.report.diagnostics.theta import T_THETA
from experiments.report.diagnostics.tuning import T_TUNING
from experiments.report.stats import NOT_RUN
from tests.experiments.report.diagnostics.helpers import (
    SEEDS,
    TASKS,
    build,
    freeze_runs,
    make_dir,
    rec,
    text,
)


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
