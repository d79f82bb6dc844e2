"""The Trainer engine (worker.finetune.hf_train) runs the loop's run: the same batches, groups,
schedule, clipping and dropout masks give the same losses and the same trained weights, bit for
bit (test_classification_reference checks every method's fingerprint against the loop's)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from storage.errors import InvalidInput
from worker.finetune.config import SubspaceConfig
from worker.finetune.methods import prepare
from worker.finetune.models import load_model
from worker.finetune.task_types import Examples, Task
from worker.finetune.train import TrainConfig, seed_everything, train
from worker.finetune.trainer import head_parameters

WORDS = ["the", "a", "good", "bad", "film", "plot", "slow", "fun", "dull", "great", "awful"]


def examples(n: int, seed: int) -> Examples:
    rng = np.random.default_rng(seed)
    texts = tuple(" ".join(rng.choice(WORDS, size=rng.integers(3, 9))) for _ in range(n))
    labels = np.array([int("good" in t or "great" in t or "fun" in t) for t in texts])
    return Examples(texts, labels)


TASK = Task(
    "toy", "classification", "accuracy", ("neg", "pos"), examples(22, 0), examples(12, 1), "test"
)


def subspace_model(method: str = "random"):
    seed_everything(0)
    loaded = load_model("tiny-bert", num_labels=2, texts=TASK.train.texts)
    model = loaded.model
    assert model.config.hidden_dropout_prob > 0  # the masks must match too
    if method == "full":
        return model, loaded.tokenizer
    return prepare(method, model, SubspaceConfig(rank=4)), loaded.tokenizer


def run(engine: str, method: str = "random", **cfg):
    model, tok = subspace_model(method)
    steps: list[tuple[int, float]] = []
    settings = dict(lr=1e-3, head_lr=5e-3, batch_size=5, max_steps=7, seed=3, device="cpu")
    result = train(
        model,
        tok,
        TASK,
        TrainConfig(engine=engine, **{**settings, **cfg}),
        theta_lr=0.05,
        head=head_parameters(model),
        on_step=lambda step, epoch, loss: steps.append((step, epoch)),
    )
    return model, result, steps


@pytest.mark.parametrize("method", ["random", "full"])
def test_the_trainer_and_the_loop_train_the_same_weights(method):
    loop, loop_result, loop_steps = run("loop", method, eval_every=3)
    hf, hf_result, hf_steps = run("trainer", method, eval_every=3)
    assert hf_result.losses == loop_result.losses
    want = dict(loop.named_parameters())
    for name, p in hf.named_parameters():
        assert torch.equal(p, want[name]), name
    # 5 per batch, 22 examples: 5 batches per epoch, so step 7 is epoch 1.4
    assert hf_steps == loop_steps == [(s, s / 5) for s in range(1, 8)]
    assert [p["step"] for p in hf_result.curve] == [p["step"] for p in loop_result.curve]
    assert [p["step"] for p in hf_result.curve] == [0, 3, 6, 7]
    assert hf_result.metrics == pytest.approx(loop_result.metrics)
    assert hf_result.steps == 7 and hf_result.trainable == loop_result.trainable


def test_gradient_accumulation_takes_two_batches_per_step():
    seen: list[int] = []
    model, tok = subspace_model()
    collate_calls = []
    original = torch.utils.data.DataLoader.__iter__

    def counting(self):
        for batch in original(self):
            collate_calls.append(len(batch["labels"]))
            yield batch

    torch.utils.data.DataLoader.__iter__ = counting
    try:
        result = train(
            model,
            tok,
            TASK,
            TrainConfig(engine="trainer", grad_accum=2, batch_size=4, max_steps=3, device="cpu"),
            theta_lr=0.05,
            on_step=lambda step, epoch, loss: seen.append(step),
        )
    finally:
        torch.utils.data.DataLoader.__iter__ = original
    assert seen == [1, 2, 3] and result.steps == 3
    assert len(collate_calls) == 6  # two batches of at most 4 per optimizer step
    assert all(np.isfinite(result.losses))


def test_held_weights_stay_zero_under_the_trainer():
    model, tok = subspace_model("full")
    weight = "bert.encoder.layer.0.attention.self.query.weight"
    mask = torch.zeros_like(model.get_parameter(weight), dtype=torch.bool)
    mask[:, :3] = True
    train(
        model,
        tok,
        TASK,
        TrainConfig(engine="trainer", max_steps=3, lr=1e-2, batch_size=4, device="cpu"),
        hold_zero={weight: mask},
    )
    p = model.get_parameter(weight)
    assert torch.count_nonzero(p[mask]) == 0 and torch.count_nonzero(p[~mask]) > 0
    assert not p._backward_hooks  # the hooks went with the run


def test_the_loop_refuses_trainer_only_settings():
    for extra in ({"grad_accum": 2}, {"precision": "bf16"}, {"report_to": ("tensorboard",)}):
        with pytest.raises(InvalidInput, match="need engine 'trainer'"):
            TrainConfig(engine="loop", **extra)
    with pytest.raises(InvalidInput, match="engine 'fast' is not one of"):
        TrainConfig(engine="fast")
    with pytest.raises(InvalidInput, match="precision"):
        TrainConfig(precision="fp8")


def test_gradient_checkpointing_trains_a_plain_model_and_is_refused_in_a_subspace():
    plain, _, _ = run("trainer", "full", gradient_checkpointing=True, max_steps=2)
    assert plain.is_activation_checkpointing  # the Trainer turned it on
    with pytest.raises(InvalidInput, match="gradient checkpointing does not work in a subspace"):
        run("trainer", "random", gradient_checkpointing=True, max_steps=2)


def test_bf16_autocast_leaves_an_ordinary_float32_model():
    model, result, _ = run("trainer", "random", precision="bf16", max_steps=3)
    assert "forward" not in vars(model)  # accelerate's autocast wrapper is gone
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert result.steps == 3 and all(np.isfinite(result.losses))
