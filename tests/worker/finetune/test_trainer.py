"""SubspaceTrainer: a SubspaceModel trained by the Hugging Face Trainer, with tinysub's
parameter groups (theta, head, the rest) in the optimizer the Trainer builds."""

from __future__ import annotations

import torch
from transformers import TrainingArguments

from tests.worker.finetune.conftest import make_batch, make_causal_model, make_lm_batch, make_model
from worker.finetune.config import SubspaceConfig
from worker.finetune.methods import prepare
from worker.finetune.trainer import SubspaceTrainer, head_parameters


def rows(batch: dict) -> list[dict]:
    n = len(batch["input_ids"])
    return [{k: v[i] for k, v in batch.items()} for i in range(n)]


def args(tmp_path, **extra) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=3,
        gradient_accumulation_steps=2,
        max_steps=3,
        learning_rate=1e-3,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        logging_steps=1,
        **extra,
    )


def test_a_decoder_trains_theta_in_bf16_with_gradient_accumulation(tmp_path):
    sub = prepare("random", make_causal_model("gpt2"), SubspaceConfig(rank=4))
    frozen = {n: p.detach().clone() for n, p in sub.base.named_parameters() if "h.0." in n}
    theta0 = {k: v.detach().clone() for k, v in sub.subspace_theta.items()}
    trainer = SubspaceTrainer(
        model=sub,
        args=args(tmp_path, bf16=True),
        train_dataset=rows(make_lm_batch(n=12)),
        theta_lr=0.05,
        head_lr=0.01,
    )
    trainer.train()
    lrs = {g["name"]: g.get("initial_lr", g["lr"]) for g in trainer.optimizer.param_groups}
    assert lrs["theta"] == 0.05 and lrs["base"] == 1e-3
    assert all(
        torch.isfinite(torch.tensor(e["loss"])) for e in trainer.state.log_history if "loss" in e
    )
    assert any(not torch.equal(theta0[k], v) for k, v in sub.subspace_theta.items())
    # the re-parameterized layers' own weights never move: only theta does
    assert all(torch.equal(frozen[n], sub.base.get_parameter(n)) for n in frozen)


def test_a_classifier_head_gets_its_own_learning_rate(tmp_path):
    sub = prepare("random", make_model("bert"), SubspaceConfig(rank=4))
    head = {id(p) for p in head_parameters(sub)}
    assert head and all(id(p) in head for p in sub.base.classifier.parameters())
    trainer = SubspaceTrainer(
        model=sub,
        args=args(tmp_path),
        train_dataset=rows(make_batch(n=12)),
        theta_lr=0.05,
        head_lr=0.01,
    )
    trainer.train()
    groups = {g["name"]: g for g in trainer.optimizer.param_groups}
    assert groups["head"].get("initial_lr", groups["head"]["lr"]) == 0.01
    assert {id(p) for p in groups["head"]["params"]} == head
