"""End to end on a tiny model: full fine-tuning records a trajectory, the SVD worker turns it
into a basis, and every command of the fine-tuning worker runs on it."""

import csv
import json
import random

import pytest

from storage.trajectory import TrajectoryStore
from tinysub.cli.main import run as cli
from worker.finetune.config import SubspaceConfig
from worker.finetune.data import load_task
from worker.finetune.runner import RunSpec, restore, run
from worker.finetune.train import TrainConfig, evaluate


@pytest.fixture(scope="module")
def toy_csv(tmp_path_factory):
    rng = random.Random(0)
    pos, neg = ["good", "great", "fine", "lovely"], ["bad", "awful", "poor", "dull"]
    filler = ["the", "movie", "plot", "actor", "scene", "was", "and", "it"]
    path = tmp_path_factory.mktemp("data") / "toy.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for _ in range(120):
            y = rng.randint(0, 1)
            words = rng.choices(filler, k=5) + [rng.choice(pos if y else neg)]
            rng.shuffle(words)
            w.writerow([" ".join(words), "pos" if y else "neg"])
    return f"csv:{path}"


COMMON = ["--model", "tiny-bert", "--steps", "8", "--batch-size", "8", "--lr", "1e-3", "-q"]


def _record(path):
    return json.loads((path / "run.json").read_text())


def test_full_then_basis_then_every_command(toy_csv, tmp_path):
    traj = tmp_path / "traj"
    assert (
        cli(
            [
                "finetune",
                "--task",
                toy_csv,
                "--method",
                "full",
                "--out",
                str(tmp_path / "full"),
                "--record-trajectory",
                str(traj),
                "--record-every",
                "2",
                *COMMON,
            ]
        )
        == 0
    )
    full = _record(tmp_path / "full")
    assert full["method"] == "full" and full["metric"] == "accuracy" and 0 <= full["score"] <= 1
    assert TrajectoryStore.open(traj).num_rows == 5  # theta0 + steps 2, 4, 6, 8

    assert (
        cli(
            [
                "basis",
                "compute",
                "--store",
                str(traj),
                "--out",
                str(tmp_path / "basis"),
                "-k",
                "3",
                "--quiet",
                "--json",
            ]
        )
        == 0
    )

    assert (
        cli(
            [
                "finetune",
                "--task",
                toy_csv,
                "--method",
                "intrinsic",
                "--basis",
                str(tmp_path / "basis"),
                "--out",
                str(tmp_path / "intr"),
                *COMMON,
            ]
        )
        == 0
    )
    intr = _record(tmp_path / "intr")
    assert intr["rank"] == 3 and intr["basis"]["kind"] == "task"
    assert set(intr["basis"]["layers"]) == {"layer.0", "layer.1"}
    assert (tmp_path / "intr" / "subspace" / "subspace.safetensors").exists()
    assert intr["data"] == full["data"]  # same split for every method

    assert (
        cli(
            [
                "finetune",
                "--task",
                toy_csv,
                "--method",
                "random",
                "--rank",
                "3",
                "--out",
                str(tmp_path / "rand"),
                *COMMON,
            ]
        )
        == 0
    )
    assert _record(tmp_path / "rand")["basis"]["kind"] == "random"

    for name in ("intr", "rand"):  # theta + the basis reference rebuild the trained model
        model, tokenizer, rec = restore(str(tmp_path / name))
        task = load_task(toy_csv)
        assert evaluate(model, tokenizer, task, TrainConfig())["accuracy"] == rec["score"]

    assert (
        cli(
            [
                "outliers",
                str(tmp_path / "intr"),
                str(tmp_path / "rand"),
                "--out",
                str(tmp_path / "fig4.png"),
            ]
        )
        == 0
    )
    assert (tmp_path / "fig4.png").stat().st_size > 1000

    for mode in ("outlier", "random"):
        assert (
            cli(
                [
                    "finetune",
                    "--task",
                    toy_csv,
                    "--method",
                    "full",
                    "--hold-zero-from",
                    str(tmp_path / "intr"),
                    "--hold-zero-mode",
                    mode,
                    "--out",
                    str(tmp_path / f"off-{mode}"),
                    *COMMON,
                ]
            )
            == 0
        )
        rec = _record(tmp_path / f"off-{mode}")
        assert rec["hold_zero"]["count"] == intr["outliers"]["total_count"]


def test_runs_are_deterministic_and_share_the_head_init(toy_csv):
    spec = RunSpec(
        task=toy_csv,
        method="fastfood",
        model="tiny-mpnet",
        subspace=SubspaceConfig(rank=4, said=True, scope="global"),
        train=TrainConfig(max_steps=4, batch_size=8, lr=1e-3, seed=3),
    )
    a, b = run(spec), run(spec)
    assert a["score"] == b["score"] and a["train"]["last_loss"] == b["train"]["last_loss"]
    freeze = run(
        RunSpec(
            task=toy_csv,
            method="freeze",
            model="tiny-mpnet",
            train=TrainConfig(max_steps=4, batch_size=8, lr=1e-3, seed=3),
        )
    )
    # Same seed: same head init and data order, so the first losses agree across methods.
    assert freeze["train"]["first_loss"] == pytest.approx(a["train"]["first_loss"], abs=1e-3)


def test_bad_requests_fail_with_one_line(toy_csv, tmp_path, capsys):
    assert (
        cli(
            [
                "finetune",
                "--task",
                toy_csv,
                "--method",
                "intrinsic",
                "--out",
                str(tmp_path / "x"),
                *COMMON,
            ]
        )
        == 2
    )
    assert "needs a basis" in capsys.readouterr().err
    assert (
        cli(
            [
                "finetune",
                "--task",
                toy_csv,
                "--method",
                "lora",
                "--out",
                str(tmp_path / "x"),
                *COMMON,
            ]
        )
        == 2
    )
    assert (
        cli(
            [
                "finetune",
                "--task",
                toy_csv,
                "--method",
                "random",
                "--init",
                "ones",
                "--dim",
                "2",
                "--out",
                str(tmp_path / "x"),
                *COMMON,
            ]
        )
        == 2
    )
    assert not (tmp_path / "x" / "run.json").exists()
