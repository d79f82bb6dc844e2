"""`tinysub experiment paper` end to end on the tiny preset: a 2-layer random BERT, the four
packaged tasks, every phase and the report; then resume after a crash and a d90 search."""

from __future__ import annotations

import json
import shutil

import pytest

from experiments import scheduler as sched
from experiments.config import ANALYSIS_PHASES, PHASES
from experiments.ledger import RUNS_FILE
from tinysub.cli.main import run as cli

pytestmark = [pytest.mark.slow, pytest.mark.integration]

CONTRACT = ("task", "method", "seed", "dim", "metric", "score")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("paper")
    code = cli(["experiment", "paper", "--preset", "tiny", "--out", str(out), "--no-progress"])
    assert code == 0
    return out


def records(out):
    return [json.loads(x) for x in (out / RUNS_FILE).read_text().splitlines()]


def test_every_phase_lands_in_runs_jsonl(finished):
    runs = records(finished)
    for r in runs:
        assert all(k in r for k in CONTRACT), r
        assert r["metric"] in ("accuracy", "matthews", "pearson")
    methods = {r["method"] for r in runs}
    assert {
        "full",
        "freeze",
        "random",
        "intrinsic",
        "transfer",
        "unified",
        "zeroshot",
        "global",
        "fastfood",
    } <= methods
    # every phase but the analysis ones (which train nothing) lands runs
    assert {r["phase"] for r in runs} == set(PHASES) - set(ANALYSIS_PHASES)
    assert len({r["id"] for r in runs}) == len(runs)
    disabled = [r for r in runs if r.get("variant", "").startswith("disable-")]
    # as many random weights held at zero as outliers (a tiny update can have none)
    held = {(r["task"], r["variant"]): r["held_zero"] for r in disabled}
    assert sum(held.values()) > 0
    for task in {t for t, _ in held}:
        assert held[(task, "disable-outlier")] == held[(task, "disable-random")]
        assert held[(task, "disable-outlier")] == held[(task, "disable-random_matched")]
        # the LayerNorm-gain outliers and the rest split the outliers between them
        parts = held[(task, "disable-outlier_ln")] + held[(task, "disable-outlier_non_ln")]
        assert parts == held[(task, "disable-outlier")]
    # no run of the tables was scored on the tuning split, and every tuning run was
    tuned = [r for r in runs if r["phase"] == "tune"]
    assert tuned and all(r["seed"] == 100 for r in tuned)
    # free parameters as the paper counts them: d per layer, not the h ensemble copies
    intrinsic = next(r for r in runs if r["method"] == "intrinsic" and r["dim"] == 4)
    assert intrinsic["free_params"] == 4 * 2  # tiny-bert has 2 layers


def test_report_figures_and_side_files(finished):
    report = (finished / "report.md").read_text()
    assert "Table 1" in report and "d90" in report and "θ learning rate" in report
    assert list(finished.glob("*.png"))
    phases = json.loads((finished / "phases.json").read_text())
    assert phases["trajectory"]["runs"] == 4 and phases["bases"]["wall_seconds"] > 0
    d90 = json.loads((finished / "d90.json").read_text())
    assert {(s["task"], s["method"]) for s in d90["searches"]} == {
        (t, m)
        for t in ("rotten_tomatoes", "trec6", "vader_movies", "sms_spam")
        for m in ("fastfood", "intrinsic")
    }
    tuning = json.loads((finished / "tuning.json").read_text())
    assert tuning["split"] == "tune"
    assert tuning["searches"]["head_lr"]["chosen"] in (1e-3, 1e-2)
    assert set(tuning["searches"]) == {"head_lr", "theta_lr", "plain_theta_lr"}  # lr is fixed
    assert set(tuning["gate"]) == set(d90_tasks := {s["task"] for s in d90["searches"]})
    diag = json.loads((finished / "diagnostics.json").read_text())
    for task in d90_tasks:
        points = diag["oracle"][task]["points"]
        assert [p["k"] for p in points] == [1, 2, 3, 4]  # k = 1..t
        assert points[-1]["captured"] == pytest.approx(1.0, abs=1e-4)  # t directions hold it all
        assert all(
            a["captured"] <= b["captured"] + 1e-9 for a, b in zip(points, points[1:], strict=False)
        )
    out = json.loads((finished / "outliers.json").read_text())
    assert set(out["posthoc"]) == d90_tasks and out["cross_task"]
    config = json.loads((finished / "config.json").read_text())
    assert set(config["chosen"]) == {"lr", "head_lr", "theta_lr", "plain_theta_lr"}
    assert config["command"].startswith("tinysub experiment paper")
    assert config["layers"] == 2 and config["record_every"] == 2


def test_resume_trains_only_what_is_missing(finished, monkeypatch):
    path = finished / RUNS_FILE
    lines = path.read_text().splitlines(keepends=True)
    everything = {json.loads(x)["id"] for x in lines}
    # lose the last three runs and leave a line cut short, as a crash mid-write would
    path.write_text("".join(lines[:-3]) + lines[-3][:25])
    calls = []
    real = sched.execute
    monkeypatch.setattr(sched, "execute", lambda job: calls.append(job.id) or real(job))
    code = cli(["experiment", "paper", "--preset", "tiny", "--out", str(finished), "--no-progress"])
    assert code == 0
    assert len(calls) == 3
    assert {r["id"] for r in records(finished)} == everything


def test_a_fresh_clone_reruns_only_the_runs_whose_files_later_phases_read(
    finished, tmp_path, monkeypatch
):
    # work/ (trajectories, bases, models) is not committed: a clone has only the results files.
    clone = tmp_path / "clone"
    shutil.copytree(finished, clone, ignore=shutil.ignore_patterns("work"))
    before = {r["id"]: r for r in records(clone)}
    calls = []
    real = sched.execute
    monkeypatch.setattr(sched, "execute", lambda job: calls.append(job.id) or real(job))
    code = cli(["experiment", "paper", "--preset", "tiny", "--out", str(clone), "--no-progress"])
    assert code == 0
    # the trajectories, the models Table 3 zeroes post hoc, the runs its outliers come from
    kept = {
        i
        for i, r in before.items()
        if r["phase"] == "trajectory"
        or (r["phase"] == "table1" and r["method"] == "full")
        or r.get("variant") == "raw-paper"
    }
    assert sorted(calls) == sorted(kept)
    after = {r["id"]: r for r in records(clone)}
    assert after.keys() == before.keys()
    for i in kept:  # same seed, same data, same machine: the same run
        assert after[i]["score"] == before[i]["score"], i


def test_other_settings_in_the_same_folder_are_refused(finished, capsys):
    code = cli(["experiment", "paper", "--quick", "--out", str(finished), "--no-progress"])
    assert code == 2
    assert "other settings" in capsys.readouterr().err


def test_d90_command_reuses_the_runs(finished, capsys, monkeypatch):
    calls = []
    monkeypatch.setattr(sched, "execute", lambda job: calls.append(job.id))
    code = cli(
        [
            "experiment",
            "d90",
            "--task",
            "trec6",
            "--method",
            "intrinsic",
            "--preset",
            "tiny",
            "--out",
            str(finished),
            "--no-progress",
        ]
    )
    assert code == 0 and calls == []
    assert "d90 of trec6 / intrinsic" in capsys.readouterr().out


def test_budget_stops_cleanly_and_says_how_to_resume(tmp_path, capsys):
    code = cli(
        [
            "experiment",
            "paper",
            "--preset",
            "tiny",
            "--out",
            str(tmp_path),
            "--budget",
            "0",
            "--no-progress",
        ]
    )
    assert code == 3
    assert "run the same command again" in capsys.readouterr().err
