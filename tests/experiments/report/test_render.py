"""The whole report on hand-written experiment folders: numbers, verdicts, figures, gaps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from experiments.config import PaperConfig
from experiments.report import build_report, headline
from experiments.report.stats import FAILS, HOLDS, NOT_RUN
from experiments.report.table1 import table1_averages
from storage.errors import NotFound

TASKS = ("rotten_tomatoes", "trec6")
SEEDS = (0, 1, 2)
PNG = b"\x89PNG\r\n\x1a\n"


# Full fine-tuning per task and seed: rotten_tomatoes 82.0 ± 2.0, trec6 90.0 ± 0.0.
FULL = {"rotten_tomatoes": (0.80, 0.82, 0.84), "trec6": (0.90, 0.90, 0.90)}
LAYERS = 6


def record(method, task, seed, score, dim=None, variant="-", **extra):
    label = "fastfood+said" if extra.get("said") else method
    base = {
        "id": f"{label}/{task}/{variant}/d{dim or 0}/s{seed}",
        "phase": extra.pop("phase", "table1"),
        "task": task,
        "method": method,
        "seed": seed,
        "dim": dim,
        "metric": "accuracy",
        "score": score,
        "metrics": {"accuracy": score},
        "free_params": dim * LAYERS if dim else 0,
        "full_space_params": 1000,
        "steps": 96,
        "seconds": 60.0,
        "train_seconds": 50.0,
        "seconds_per_step": 0.5,
        "train_size": 1000,
        "dev_size": 500,
        "run_dir": "/nonexistent",
        "variant": variant,
        "said": False,
        "scope": "layer",
    }
    return {**base, **extra}


def outlier_summary(excess):
    return {
        "sigma": 3.0,
        "total_count": int(30 * excess),
        "total_fraction": 0.0027 * excess,
        "expected_gaussian_fraction": 0.0027,
        "kurtosis_mean": 2.0 * excess,
        "excess_mean": excess,
    }


def scenario(good: bool) -> list[dict]:
    """A full ledger in which every finding holds (good) or fails (not good)."""
    # Offsets below full, in score units, per method.
    off = (
        {"freeze": 0.15, "random": 0.10, "intrinsic": 0.01, "transfer": 0.03}
        if good
        else {"freeze": 0.01, "random": 0.08, "intrinsic": 0.12, "transfer": 0.10}
    )
    runs = []
    for task in TASKS:
        other = next(t for t in TASKS if t != task)
        for seed, full in zip(SEEDS, FULL[task], strict=True):
            runs.append(record("full", task, seed, full))
            runs.append(record("freeze", task, seed, full - off["freeze"]))
            runs.append(
                record(
                    "random",
                    task,
                    seed,
                    full - off["random"],
                    32,
                    outliers=outlier_summary(1.0),
                )
            )
            runs.append(
                record(
                    "intrinsic",
                    task,
                    seed,
                    full - off["intrinsic"],
                    32,
                    "delta",
                    mode="delta",
                    basis_from=task,
                    outliers=outlier_summary(3.0 if good else 1.0),
                )
            )
            runs.append(
                record(
                    "transfer",
                    task,
                    seed,
                    full - off["transfer"],
                    32,
                    f"from-{other}",
                    basis_from=other,
                    mode="delta",
                )
            )
            runs.append(record("unified", task, seed, full - 0.01, 16, "per-task-8"))
            runs.append(record("zeroshot", task, seed, full - 0.05, 8, "per-task-8"))
            hurt = 0.30 if good else 0.01
            for kind, drop in (("random", 0.01), ("outlier", hurt)):
                runs.append(
                    record("full", task, seed, full - drop, None, f"disable-{kind}", held_zero=90)
                )
            ablation = {8: 0.06, 16: 0.03} if good else {8: 0.0, 16: 0.05}
            for dim, drop in ablation.items():
                runs.append(
                    record("intrinsic", task, seed, full - drop, dim, "delta", mode="delta")
                )
            for mode in ("raw", "centered"):
                runs.append(record("intrinsic", task, seed, full - 0.04, 16, mode, mode=mode))
            runs.append(record("intrinsic", task, seed, full - 0.05, 5, "delta", mode="delta"))
            runs.append(
                record(
                    "global",
                    task,
                    seed,
                    full - 0.02,
                    5 * LAYERS,
                    "global",
                    scope="global",
                    free_params=5 * LAYERS,
                )
            )
    return runs


def d90_file(good: bool) -> dict:
    searches = []
    for task in TASKS:
        full = float(np.mean(FULL[task]))
        target = 0.9 * full
        intrinsic_d90 = 4 if good else None
        searches += [
            {
                "task": task,
                "method": "intrinsic",
                "target": target,
                "seeds": [0],
                "d90": intrinsic_d90,
                "free_params": 4 * LAYERS if good else None,
                "max_tried": 32,
                "metric": "accuracy",
                "points": [
                    {"d": 1, "score": target - 0.05, "n": 1},
                    {"d": 4, "score": target + (0.01 if good else -0.01), "n": 1},
                    {"d": 32, "score": target + (0.02 if good else -0.01), "n": 1},
                ],
            },
            {
                "task": task,
                "method": "fastfood",
                "target": target,
                "seeds": [0],
                "d90": 256,
                "free_params": 256,
                "max_tried": 16384,
                "metric": "accuracy",
                "points": [
                    {"d": 64, "score": target - 0.02, "n": 1},
                    {"d": 256, "score": target + 0.01, "n": 1},
                ],
            },
        ]
    freeze = 0.15 if good else 0.5
    return {
        "searches": searches,
        "full": {t: float(np.mean(FULL[t])) for t in TASKS},
        "freeze": {t: float(np.mean(FULL[t])) - freeze for t in TASKS},
    }


def config() -> dict:
    cfg = PaperConfig(tasks=TASKS, seeds=SEEDS)
    return {
        **cfg.to_dict(),
        "record_every": cfg.record_every,
        "layers": LAYERS,
        "unified_dim": cfg.unified_dim,
        "zeroshot_dim": cfg.zeroshot_dim,
        "dev_fraction": 0.15,
        "command": "tinysub experiment paper --out DIR",
    }


def write_dir(path: Path, runs: list[dict], *, good: bool = True, extras: bool = True) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in runs))
    if extras:
        (path / "config.json").write_text(json.dumps(config()))
        phases = {"trajectory": {"wall_seconds": 600.0, "runs": 2, "run_seconds": 900.0}}
        (path / "phases.json").write_text(json.dumps(phases))
        (path / "d90.json").write_text(json.dumps(d90_file(good)))
    return path


def verdict_line(text: str, key: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(f"**Verdict {key} "))


def verdict_of(text: str, key: str) -> str:
    line = verdict_line(text, key)
    return line.split("): ", 1)[1].split(".**", 1)[0]


def test_holds_case_tables_verdicts_and_figures(tmp_path):
    runs = scenario(good=True)
    out = write_dir(tmp_path / "good", runs, good=True)
    text = build_report(out).read_text()

    # Table 1: our means ± std per task, the Avg. column and the paper row beside them.
    assert "| full | 82.0 ± 2.0 | 90.0 ± 0.0 | 86.0 |" in text
    assert "| intrinsic | 81.0 ± 2.0 | 89.0 ± 0.0 | 85.0 | 192 |" in text  # 32 per layer x 6 layers
    assert "| paper BERT-full | 91.95 | 82.13 | 82.13 |" in text
    avgs = table1_averages(runs, config())
    assert avgs == pytest.approx({"full": 86.0, "freeze": 71.0, "random": 76.0, "intrinsic": 85.0})
    assert table1_averages(runs, PaperConfig(tasks=TASKS, seeds=SEEDS)) == pytest.approx(avgs)

    for key in ("T1a", "T1b", "T1c", "F2", "T2a", "T2b", "T2c", "T3", "F4", "T5", "d90"):
        assert verdict_of(text, key) == HOLDS, verdict_line(text, key)
    # Only T3c (the outlier controls, absent from this scenario) says what it still needs.
    assert text.count("Likely reason:") == 1 and "needs the controls" in text
    assert "1.0 points" in verdict_line(text, "T1a")  # mean full − intrinsic
    # Held-at-zero count with its share of the encoder (30 * 3 / (0.0027 * 3) = 11111).
    assert "90 (0.81%)" in text
    # d90 cells: d90 (dof).
    assert "4 (24 dof)" in text and "256 (256 dof)" in text
    # New sections state an outcome.
    assert "| θ params | 30 | 30 | 192 |" in text  # global vs layer-wise: equal budget
    assert "Outcome: global beats layer-wise at equal free parameters by 3.0 points" in text
    assert "Outcome: delta has the best average" in text
    assert "tinysub experiment paper --out DIR" in text

    for name in ("fig2_transfer.png", "fig_dims.png", "fig_d90.png"):
        assert (out / name).read_bytes()[:8] == PNG, name
    # No run folder is left: Figure 4 and Table 4 are skipped, not a crash.
    assert not (out / "fig4_outliers.png").exists()
    assert "Figure 4: not drawn" in text and "Table 4 (positions): not available" in text

    head = headline(out)
    assert "full 86.0, freeze 71.0, random 76.0, intrinsic 85.0" in head
    assert "holds here" in head


def test_does_not_hold_case_gives_reasons(tmp_path):
    out = write_dir(tmp_path / "bad", scenario(good=False), good=False)
    text = build_report(out, draw_figures=False).read_text()
    for key in ("T1a", "T1b", "T1c", "F2", "T3", "F4", "T5", "d90"):
        assert verdict_of(text, key) == FAILS, verdict_line(text, key)
    # The "likely reason" names the cause visible in the numbers.
    assert "Likely reason:" in text
    assert "the encoder barely needs to move on these tasks: full − freeze = " in text
    assert "random above intrinsic on rotten_tomatoes -4.0, trec6 -4.0 points" in text
    assert "intrinsic vs fastfood dof: rotten_tomatoes not reached vs 256" in text
    assert "does not hold here" in headline(out)


def test_d90_tasks_where_freeze_reaches_the_target_are_set_apart(tmp_path):
    out = write_dir(tmp_path / "frozen", scenario(good=True))
    d90 = d90_file(good=True)
    d90["freeze"] = dict(d90["full"])  # freeze alone scores as well as full
    (out / "d90.json").write_text(json.dumps(d90))
    text = build_report(out, draw_figures=False).read_text()
    assert "Freeze alone (no encoder update; embeddings and head still train) already" in text
    assert verdict_of(text, "d90") == FAILS
    assert "0 of 0 tasks (2 set apart: freeze reaches the target)" in text


def test_partial_ledger_still_reports(tmp_path):
    runs = [r for r in scenario(good=True) if r["method"] == "full" and r["variant"] == "-"]
    runs = [r for r in runs if r["seed"] < 2]  # two of three seeds; no other file
    out = write_dir(tmp_path / "partial", runs, extras=False)
    text = build_report(out).read_text()
    assert "config.json is missing" in text and "d90.json is missing" in text
    # Seeds come from the runs when config.json is missing: n = 2 is the seed count.
    assert "| full | 81.0 ± 1.4 | 90.0 ± 0.0 | 85.5 |" in text
    assert "| intrinsic | – | – | – |" in text
    assert verdict_of(text, "T1a") == NOT_RUN
    assert "| T1a | intrinsic ≈ full | **not run yet** | – |" in text
    assert "Likely reason: needs full and intrinsic" in text
    assert "not run yet" in headline(out)
    assert not (out / "fig2_transfer.png").exists()


def test_malformed_side_files_do_not_crash(tmp_path):
    out = write_dir(tmp_path / "odd", scenario(good=True)[:5], extras=False)
    (out / "config.json").write_text("{not json")
    (out / "phases.json").write_text(json.dumps({"table1": "?", "d90": {"runs": 3}}))
    search = {"task": "rotten_tomatoes", "method": "intrinsic", "points": [{"d": 2}]}
    d90 = {"searches": [search, 7], "full": None}
    (out / "d90.json").write_text(json.dumps(d90))
    text = build_report(out).read_text()
    assert "config.json could not be read" in text
    assert "| rotten_tomatoes | – | – | – | – | – | – | – |" in text  # nothing usable in d90


def test_cells_with_fewer_seeds_show_n(tmp_path):
    runs = [r for r in scenario(good=True) if not (r["method"] == "freeze" and r["seed"] == 2)]
    text = build_report(write_dir(tmp_path / "n", runs), draw_figures=False).read_text()
    assert "| freeze | 66.0 ± 1.4 (n=2) | 75.0 ± 0.0 (n=2) |" in text


def test_missing_ledger_is_not_found(tmp_path):
    with pytest.raises(NotFound, match="runs.jsonl"):
        build_report(tmp_path)


def test_figure4_and_table4_from_run_folders(tmp_path):
    from storage.layout import build_layout
    from worker.finetune import outliers

    layout = build_layout(
        [
            ("encoder.layer.0.attention.weight", (20, 10)),
            ("encoder.layer.0.attention.bias", (10,)),
            ("encoder.layer.1.attention.weight", (20, 10)),
            ("encoder.layer.1.attention.bias", (10,)),
        ]
    )
    rng = np.random.default_rng(0)
    runs = scenario(good=True)
    for method in ("intrinsic", "random"):
        updates = {g: rng.standard_normal(layout.group(g).size) for g in layout.group_names}
        if method == "intrinsic":
            updates["layer.1"][205] = 50.0  # a spike in the bias of layer 1
        folder = tmp_path / "runs" / method
        outliers.save(folder, outliers.find_outliers(updates), layout, updates)
        first = next(r for r in runs if r["method"] == method and r["dim"] == 32)
        first["run_dir"] = str(folder)
    out = write_dir(tmp_path / "fig4", runs)
    text = build_report(out).read_text()
    assert (out / "fig4_outliers.png").read_bytes()[:8] == PNG
    assert "![Figure 4](fig4_outliers.png)" in text
    assert "| attention.bias | layer.1 |" in text
    assert "intrinsic/rotten_tomatoes/delta/d32/s0" in text
