"""Every fine-tuning method on tiny GPT-2 and Llama decoders, through `run(RunSpec)`.

A full run records its trajectory; the SVD worker turns it into task and global bases; the
subspace methods train in them (and in another task's basis, a unified one and a zero-shot
one), in random and Fastfood subspaces; every run is scored by perplexity and generates text.
"""

from __future__ import annotations

import json
import math
import random

import pytest

from client.refs import BasisRef
from worker.finetune.config import SubspaceConfig
from worker.finetune.data import load_task
from worker.finetune.runner import RunSpec, restore, run
from worker.finetune.train import TrainConfig, evaluate
from worker.svd.bases import multitask_bases, task_basis

COLORS = {"sky": "blue", "grass": "green", "sun": "yellow", "snow": "white", "coal": "black"}
TRAIN = TrainConfig(max_steps=4, batch_size=8, lr=1e-2, seed=1)


def color_pairs(path, n: int = 60, seed: int = 0) -> str:
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            thing = rng.choice(list(COLORS))
            f.write(
                json.dumps({"prompt": f"what color is the {thing} ?", "response": COLORS[thing]})
            )
            f.write("\n")
    return f"jsonl:{path}"


def color_text(path, n: int = 60, seed: int = 1) -> str:
    rng = random.Random(seed)
    lines = [f"the {k} is {v}" for k, v in rng.choices(list(COLORS.items()), k=n)]
    path.write_text("\n".join(lines) + "\n")
    return f"text:{path}"


@pytest.fixture(scope="module", params=["tiny-gpt2", "tiny-llama"])
def recorded(request, tmp_path_factory):
    """A full run of `model` recorded step by step, and its task and global bases."""
    model = request.param
    tmp = tmp_path_factory.mktemp(model)
    task = color_pairs(tmp / "colors.jsonl")
    full = run(
        RunSpec(
            task=task,
            method="full",
            model=model,
            task_type="causal-lm",
            train=TrainConfig(max_steps=6, batch_size=8, lr=1e-2, seed=1),
            record_trajectory=str(tmp / "traj"),
            record_every=1,
        )
    )
    task_basis(full["trajectory"], str(tmp / "basis"), 3, mode="delta")
    task_basis(full["trajectory"], str(tmp / "global"), 3, mode="delta", scope="global")
    return {"model": model, "task": task, "full": full, "tmp": tmp}


def _spec(recorded, method: str, **kw) -> RunSpec:
    return RunSpec(
        task=recorded["task"],
        method=method,
        model=recorded["model"],
        task_type="causal-lm",
        train=TRAIN,
        **kw,
    )


def _check(record: dict) -> None:
    m = record["metrics"]
    assert record["metric"] == "perplexity" and record["score"] == m["perplexity"]
    assert math.isfinite(m["loss"]) and m["perplexity"] == pytest.approx(math.exp(m["loss"]))
    assert m["tokens"] > 0 and record["data"]["format"] == "prompt-response"
    assert len(record["samples"]) == 3 and all(
        isinstance(s["output"], str) for s in record["samples"]
    )


def test_every_method_trains_a_decoder(recorded):
    full = recorded["full"]
    _check(full)
    assert full["train"]["last_loss"] < full["train"]["first_loss"]
    tmp = recorded["tmp"]
    runs = {
        "freeze": run(_spec(recorded, "freeze")),
        "intrinsic": run(_spec(recorded, "intrinsic", basis=str(tmp / "basis"))),
        "global": run(_spec(recorded, "global", basis=str(tmp / "global"))),
        "random": run(_spec(recorded, "random", subspace=SubspaceConfig(rank=3))),
        "fastfood": run(
            _spec(recorded, "fastfood", subspace=SubspaceConfig(rank=4, said=True, scope="global"))
        ),
    }
    for method, rec in runs.items():
        _check(rec)
        # The same seed gives every method the same start; theta starts near 0 (random init,
        # std 0.01 in the trajectory's units), so the first losses are close.
        assert rec["train"]["first_loss"] == pytest.approx(full["train"]["first_loss"], abs=1e-2)
        if method != "freeze":
            assert rec["train"]["trainable"]["subspace"] > 0
    assert runs["intrinsic"]["rank"] == 3 and runs["intrinsic"]["basis"]["kind"] == "task"
    assert set(runs["intrinsic"]["basis"]["layers"]) == {"layer.0", "layer.1"}
    assert runs["global"]["basis"]["scope"] == "global"
    # Only theta trains in the subspace: h x k per layer (16 x 3 x 2 layers) beside the
    # full-space parts (embeddings; an untied lm_head is the head).
    assert runs["intrinsic"]["train"]["trainable"]["subspace"] == 16 * 3 * 2
    assert runs["freeze"]["train"]["trainable"]["subspace"] == 0


def test_a_subspace_run_restores_from_its_folder(recorded):
    out = recorded["tmp"] / "intrinsic-run"
    rec = run(_spec(recorded, "intrinsic", basis=str(recorded["tmp"] / "basis"), out=str(out)))
    model, tokenizer, saved = restore(str(out))
    task = load_task(recorded["task"], problem="causal_lm")
    assert evaluate(model, tokenizer, task, TRAIN)["perplexity"] == pytest.approx(
        rec["score"], rel=1e-5
    )
    assert saved["data"]["problem"] == "causal_lm"


@pytest.mark.parametrize("recorded", ["tiny-gpt2"], indirect=True)
def test_bases_of_other_tasks(recorded, tmp_path):
    """transfer (another task's basis), unified (both tasks) and zeroshot (held out)."""
    # A second task on the same architecture: plain text, its own recorded full run.
    other = color_text(tmp_path / "sentences.txt")
    second = run(
        RunSpec(
            task=other,
            method="full",
            model=recorded["model"],
            task_type="causal-lm",
            train=TrainConfig(max_steps=6, batch_size=8, lr=1e-2, seed=1),
            record_trajectory=str(tmp_path / "traj-other"),
            record_every=1,
        )
    )
    # Its vocabulary (from its own texts) differs; its layers, and so its layout, do not.
    assert second["layout_hash"] == recorded["full"]["layout_hash"]
    assert second["data"]["format"] == "text"
    stores = {"colors": recorded["full"]["trajectory"], "sentences": second["trajectory"]}
    multitask_bases(stores, str(tmp_path / "multi"), 3, selection="all")
    task_basis(second["trajectory"], str(tmp_path / "other-basis"), 3)
    transfer = run(
        _spec(
            recorded,
            "transfer",
            basis=str(tmp_path / "other-basis"),
            basis_ref=BasisRef("sentences", "task"),
        )
    )
    unified = run(_spec(recorded, "unified", basis=str(tmp_path / "multi" / "unified")))
    zeroshot = run(
        _spec(
            recorded,
            "zeroshot",
            basis=str(tmp_path / "multi" / "zeroshot-colors"),
        )
    )
    for rec in (transfer, unified, zeroshot):
        _check(rec)
    assert transfer["basis"]["kind"] == "task" and zeroshot["basis"]["held_out"] == "colors"


def test_the_cli_fine_tunes_a_decoder(tmp_path, capsys):
    from tinysub.cli.main import run as cli

    csv_path = tmp_path / "qa.csv"
    rows = [f"what color is the {k} ?,{v}" for k, v in list(COLORS.items()) * 6]
    csv_path.write_text("question_text,answer_text\n" + "\n".join(rows) + "\n")
    common = ["--task", f"csv:{csv_path}", "--model", "tiny-llama", "--steps", "3", "-q"]
    columns = ["--prompt-column", "question_text", "--response-column", "answer_text"]
    out = tmp_path / "run"
    assert (
        cli(
            [
                "finetune",
                *common,
                "--task-type",
                "causal-lm",
                *columns,
                "--method",
                "random",
                "--rank",
                "3",
                "--out",
                str(out),
                "--save-model",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "perplexity" in printed and "'what color is the" in printed
    record = json.loads((out / "run.json").read_text())
    assert record["metric"] == "perplexity" and record["data"]["format"] == "prompt-response"
    assert (out / "model" / "config.json").exists()
    assert cli(["finetune", *common, "--task-type", "lm", "--out", str(tmp_path / "x")]) == 2
    assert "task type 'lm'" in capsys.readouterr().err
    # Without --task-type the file is a labeled task, which it is not: one clear line.
    assert cli(["finetune", *common, "--method", "full", "--out", str(tmp_path / "y")]) == 2
