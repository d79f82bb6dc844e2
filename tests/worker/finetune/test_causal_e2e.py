"""End to end on tiny GPT-2 and Llama decoders: the Hugging Face Trainer records a trajectory
(through `TrajectoryCallback`, and through its checkpoint folders), the SVD worker turns it into
a basis, the worker fine-tunes theta alone in that basis, and the merged model generates text
that theta0 did not."""

from __future__ import annotations

import pytest
import torch

from storage.callback import TrajectoryCallback
from storage.ingest import ingest_checkpoints
from storage.trajectory import TrajectoryStore
from tests.worker.finetune.test_causal_runs import COLORS, color_pairs
from worker.finetune.causal import LMCollator, generate, tokenize_examples
from worker.finetune.config import SubspaceConfig
from worker.finetune.data import CAUSAL_LM, load_task
from worker.finetune.models import load_causal_model
from worker.finetune.runner import RunSpec, run
from worker.finetune.train import TrainConfig, evaluate, seed_everything
from worker.svd.bases import task_basis

PROMPTS = ["what color is the sky ?", "what color is the grass ?", "what color is the coal ?"]


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_trainer_trajectory_to_basis_to_subspace_model_that_generates(arch, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

    spec_task = color_pairs(tmp_path / "colors.jsonl", n=80)
    task = load_task(spec_task, problem=CAUSAL_LM)
    seed_everything(0)
    loaded = load_causal_model(f"tiny-{arch}", texts=task.train.texts + task.train.responses)
    tok = loaded.tokenizer
    theta0 = tmp_path / "theta0"  # the "pre-trained" model every later step starts from
    loaded.model.save_pretrained(theta0)
    tok.save_pretrained(theta0)

    callback = TrajectoryCallback(str(tmp_path / "traj"), every=2)
    args = TrainingArguments(
        output_dir=str(tmp_path / "hf"),
        max_steps=12,
        per_device_train_batch_size=8,
        learning_rate=1e-2,
        logging_steps=2,
        save_strategy="steps",
        save_steps=6,
        report_to=[],
        use_cpu=True,
        seed=0,
        remove_unused_columns=False,
        disable_tqdm=True,
    )
    Trainer(
        model=loaded.model,
        args=args,
        train_dataset=tokenize_examples(tok, task.train, 32),
        data_collator=LMCollator(tok),
        callbacks=[callback],
    ).train()
    store = TrajectoryStore.open(str(tmp_path / "traj"))
    assert [r.step for r in store.rows] == [0, 2, 4, 6, 8, 10, 12]
    assert store.layout.rule == ("gpt2" if arch == "gpt2" else "llama")
    assert all("loss" in r.metrics for r in store.rows[1:])

    # The Trainer's checkpoint folders give the same rows.
    report = ingest_checkpoints(str(tmp_path / "traj-ckpt"), tmp_path / "hf", base=theta0)
    from_folders = TrajectoryStore.open(report.url)
    assert [r.step for r in from_folders.rows] == [0, 6, 12]
    assert from_folders.layout.hash == store.layout.hash
    by_step = {r.step: r.sha256 for r in store.rows}
    assert all(r.sha256 == by_step[r.step] for r in from_folders.rows)

    basis = task_basis(store.url, str(tmp_path / "basis"), 4, mode="delta").bases[0]
    assert basis.layer_names == ["layer.0", "layer.1"]

    # theta alone trains (no full-space part) in the basis, from the saved theta0 folder.
    record = run(
        RunSpec(
            task=spec_task,
            method="intrinsic",
            model=str(theta0),
            basis=str(tmp_path / "basis"),
            task_type="causal-lm",
            subspace=SubspaceConfig(train_parts=(), init="zeros", theta_lr=0.5),
            train=TrainConfig(max_steps=30, batch_size=8, seed=0),
            out=str(tmp_path / "run"),
            save_model=True,
        )
    )
    assert record["train"]["trainable"] == {"subspace": 16 * 4 * 2, "full_space": 0}
    base = AutoModelForCausalLM.from_pretrained(theta0)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "model")
    merged_tok = AutoTokenizer.from_pretrained(tmp_path / "run" / "model")
    # Only the layers moved, and the held-out perplexity fell.
    moved = [n for n, p in merged.named_parameters() if not torch.equal(p, base.get_parameter(n))]
    assert moved and all((".h." if arch == "gpt2" else ".layers.") in n for n in moved)
    before = evaluate(base, tok, task, TrainConfig())["perplexity"]
    assert record["score"] < before
    after = generate(merged, merged_tok, PROMPTS, max_new_tokens=3, skip_special_tokens=False)
    assert after != generate(base, tok, PROMPTS, max_new_tokens=3, skip_special_tokens=False)
    # It continues a question with what training taught: a color, or the end of the answer.
    taught = {*COLORS.values(), tok.eos_token}
    assert all(text.split()[0] in taught for text in after), after


def test_registry_round_trip_for_a_decoder(tmp_path):
    """record -> registry (upload, basis job) -> pull by task ID -> subspace fine-tune ->
    the merged model generates; the run is posted back with its perplexity."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from client import Client
    from client.refs import BasisRef, RegistryConfig
    from services.local import LocalServer

    task = color_pairs(tmp_path / "colors.jsonl")
    train = TrainConfig(max_steps=6, batch_size=8, lr=1e-2, seed=1)
    full = run(
        RunSpec(
            task=task,
            method="full",
            model="tiny-gpt2",
            task_type="causal-lm",
            train=train,
            record_trajectory=str(tmp_path / "traj"),
            record_every=2,
        )
    )
    store = TrajectoryStore.open(full["trajectory"])
    with LocalServer(tmp_path / "registry") as server:
        token = server.admin_token()
        with Client(server.url, token=token, cache_dir=tmp_path / "cache") as client:
            client.create_task("colors", model=store.model_name, layout=store.layout)
            client.upload_trajectory("colors", full["trajectory"])
            client.compute_basis("colors", "task", rank=3, mode="delta").wait(timeout=120)
            record = run(
                RunSpec(
                    task=task,
                    method="intrinsic",
                    model="tiny-gpt2",
                    task_type="causal-lm",
                    train=train,
                    registry=RegistryConfig(server.url, token=token),
                    basis_ref=BasisRef("colors", "task"),
                    out=str(tmp_path / "intr"),
                    save_model=True,
                )
            )
            posted = [r for r in client.runs(task_id="colors") if r["method"] == "intrinsic"]
    assert record["basis"]["task"] == "colors" and record["basis"]["version"] == 1
    shas = {n: info["sha256"] for n, info in record["basis"]["layers"].items()}
    assert record["basis_ref"]["version"] == 1 and record["basis_ref"]["layer_sha256"] == shas
    assert record["rank"] == 3 and record["registry_run"]["posted"] is True
    assert posted[0]["metrics"]["perplexity"] == pytest.approx(record["score"])
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "intr" / "model")
    tok = AutoTokenizer.from_pretrained(tmp_path / "intr" / "model")
    assert all(isinstance(t, str) for t in generate(merged, tok, PROMPTS, max_new_tokens=3))


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_registry_basis_trainer_and_peft_round_trip(arch, tmp_path):
    """record -> registry basis -> pull -> intrinsic fine-tune by the HF Trainer (bf16 autocast
    on CPU, gradient accumulation 2) -> PEFT save -> PEFT load in a fresh process -> the same
    logits."""
    import os
    import subprocess
    import sys
    import textwrap

    from transformers import TrainingArguments

    from client import Client
    from services.local import LocalServer
    from worker.finetune.methods import prepare
    from worker.finetune.peft_export import export_peft
    from worker.finetune.sources import RegistryBasisSource
    from worker.finetune.trainer import SubspaceTrainer

    task = color_pairs(tmp_path / "colors.jsonl")
    seed_everything(0)
    examples = load_task(task, problem=CAUSAL_LM).train
    loaded = load_causal_model(f"tiny-{arch}", texts=examples.texts + examples.responses)
    theta0 = tmp_path / "theta0"
    loaded.model.save_pretrained(theta0)
    loaded.tokenizer.save_pretrained(theta0)
    full = run(
        RunSpec(
            task=task,
            method="full",
            model=str(theta0),
            task_type="causal-lm",
            train=TrainConfig(max_steps=6, batch_size=8, lr=1e-2, seed=1),
            record_trajectory=str(tmp_path / "traj"),
            record_every=2,
        )
    )
    store = TrajectoryStore.open(full["trajectory"])
    with LocalServer(tmp_path / "registry") as server:
        token = server.admin_token()
        with Client(server.url, token=token, cache_dir=tmp_path / "cache") as client:
            client.create_task("colors", model=store.model_name, layout=store.layout)
            client.upload_trajectory("colors", full["trajectory"])
            client.compute_basis("colors", "task", rank=3, mode="delta").wait(timeout=120)
        source = RegistryBasisSource(
            server.url, "colors", "task", token=token, cache_dir=str(tmp_path / "cache")
        )
        model = load_causal_model(str(theta0)).model
        sub = prepare("intrinsic", model, SubspaceConfig(train_parts=()), source=source)
        args = TrainingArguments(
            output_dir=str(tmp_path / "hf"),
            max_steps=4,
            per_device_train_batch_size=4,
            gradient_accumulation_steps=2,
            bf16=True,
            report_to=[],
            save_strategy="no",
            use_cpu=True,
            remove_unused_columns=False,
            disable_tqdm=True,
        )
        before = {k: v.detach().clone() for k, v in sub.subspace_theta.items()}
        SubspaceTrainer(
            model=sub,
            args=args,
            train_dataset=tokenize_examples(loaded.tokenizer, examples, 32),
            data_collator=LMCollator(loaded.tokenizer),
            theta_lr=0.05,
        ).train()
        assert any(not torch.equal(before[k], v) for k, v in sub.subspace_theta.items())
        export_peft(sub, tmp_path / "adapter")
        batch = loaded.tokenizer(PROMPTS, return_tensors="pt", padding=True)
        # accelerate left its bf16 autocast wrapper on the trained model's forward: compare in
        # float32, as the fresh process computes.
        vars(sub).pop("forward", None)
        with torch.no_grad():
            want = sub.eval()(**batch).logits
        torch.save({"batch": dict(batch), "logits": want}, tmp_path / "want.pt")
        script = textwrap.dedent(
            f"""
            import torch
            from peft import PeftModel
            from transformers import AutoModelForCausalLM
            import worker.finetune.peft_adapter  # registers the tinysub PEFT method
            saved = torch.load({str(tmp_path / "want.pt")!r})
            base = AutoModelForCausalLM.from_pretrained({str(theta0)!r}).eval()
            model = PeftModel.from_pretrained(base, {str(tmp_path / "adapter")!r})
            with torch.no_grad():
                got = model(**saved["batch"]).logits
            print(float((got - saved["logits"]).abs().max()))
            """
        )
        # A fresh process with an empty cache: the adapter pulls V from the registry.
        env = {"TINYSUB_TOKEN": token, "TINYSUB_CACHE": str(tmp_path / "fresh-cache")}
        out = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, **env},
        )
    assert out.returncode == 0, out.stderr[-2000:]
    assert float(out.stdout.strip().splitlines()[-1]) <= 1e-5
