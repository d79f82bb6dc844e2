"""A plain torch training loop shared by every method, so their numbers compare.

AdamW with a linear decay (the defaults of the Transformers example script the paper used:
lr 5e-5, no warmup, no weight decay, gradient clipping at 1.0), up to three parameter groups:
the subspace vectors (names containing ``subspace_``) at ``theta_lr`` (0.01 in the paper), the
head (pooler and classifier, freshly initialized: it has to travel from its init, so it gets its
own ``head_lr``; a decoder's untied ``lm_head``) and everything else that trains (embeddings, or
all parameters for ``full``) at ``lr``. Seeds fix dropout, the data order and any freshly
initialized head.

Modules: `train_config` (the settings and the device), `optimizer` (parameter groups, schedule,
held weights, the update), `evaluation` (held-out scores, the learning curve); this module runs
the loop.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from storage.errors import InvalidInput
from storage.vocabulary import TrainEngine
from worker.finetune.causal import lm_batch
from worker.finetune.evaluation import LearningCurve, encode, evaluate, predict
from worker.finetune.optimizer import (
    HeldZero,
    StepBudget,
    Updater,
    build_updater,
    count_trainable,
    is_subspace_param,
    linear_schedule,
    param_groups,
)
from worker.finetune.task_types import CAUSAL_LM, Examples, Task
from worker.finetune.train_config import TrainConfig, resolve_device, seed_everything

__all__ = [
    "HeldZero",
    "LearningCurve",
    "StepBudget",
    "TrainConfig",
    "TrainResult",
    "Updater",
    "batch_loss",
    "batch_order",
    "build_updater",
    "count_trainable",
    "encode",
    "evaluate",
    "finite_loss",
    "is_subspace_param",
    "linear_schedule",
    "param_groups",
    "predict",
    "resolve_device",
    "seed_everything",
    "train",
    "train_steps",
]

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    steps: int
    seconds: float
    losses: list[float]
    metrics: dict[str, float]
    eval_seconds: float
    trainable: dict[str, int] = field(default_factory=dict)
    # (step, held-out metrics) at every cfg.eval_every steps: the learning curve.
    curve: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "steps": self.steps,
            "seconds": self.seconds,
            "seconds_per_step": self.seconds / max(1, self.steps),
            "eval_seconds": self.eval_seconds,
            "first_loss": self.losses[0] if self.losses else None,
            "last_loss": float(np.mean(self.losses[-10:])) if self.losses else None,
            "trainable": self.trainable,
            "losses": [round(x, 5) for x in self.losses],
            "curve": self.curve,
        }


def batch_order(
    n: int, batch_size: int, total: int, generator: torch.Generator
) -> Iterator[list[int]]:
    """The example indices of `total` batches: a fresh permutation of the `n` examples (from
    `generator`, so the seed fixes the data order) each epoch, the last epoch cut short."""
    done = 0
    while done < total:
        perm = torch.randperm(n, generator=generator).tolist()
        for a in range(0, n, batch_size):
            if done >= total:
                break
            yield perm[a : a + batch_size]
            done += 1


def batch_loss(
    model: nn.Module,
    tokenizer,
    task: Task,
    idx: list[int],
    cfg: TrainConfig,
    device: torch.device,
) -> torch.Tensor:
    """The training loss of the examples `idx`: next-token loss for a causal-LM task (the
    labels are the tokens themselves, prompts masked), else the loss against the labels."""
    return model(**batch_inputs(tokenizer, task, idx, cfg, device)).loss


def batch_inputs(
    tokenizer, task: Task, idx: list[int], cfg: TrainConfig, device: torch.device
) -> dict[str, torch.Tensor]:
    """The model inputs of the training examples `idx`, labels included: the tokens
    themselves (prompts masked) for a causal-LM task, else the task's labels."""
    if task.problem == CAUSAL_LM:
        return lm_batch(tokenizer, task.train, idx, cfg.max_length, device)
    labels_dtype = torch.float32 if task.problem == "regression" else torch.long
    batch = encode(tokenizer, task.train, idx, cfg.max_length, device)
    labels = torch.as_tensor(task.train.labels[idx], dtype=labels_dtype, device=device)
    return {**batch, "labels": labels}


def finite_loss(loss: torch.Tensor, step: int) -> float:
    """The loss as a float; a diverged run stops here rather than training on NaNs."""
    value = float(loss.detach())
    if not math.isfinite(value):
        raise InvalidInput(f"the loss became {value} at step {step}; lower the learning rates")
    return value


def train_steps(
    model: nn.Module,
    tokenizer,
    task: Task,
    cfg: TrainConfig,
    device: torch.device,
    updater: Updater,
    budget: StepBudget,
    curve: LearningCurve,
    on_step: Callable[[int, float, float], None] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> list[float]:
    """Run the budget's optimizer steps and return every step's loss, calling on_step and
    progress after each step and adding the learning curve's points when they are due."""
    order = torch.Generator().manual_seed(cfg.seed)
    losses: list[float] = []
    batches = batch_order(len(task.train), cfg.batch_size, budget.total, order)
    for step, idx in enumerate(batches, start=1):
        loss = batch_loss(model, tokenizer, task, idx, cfg, device)
        updater.apply(loss)
        value = finite_loss(loss, step)
        losses.append(value)
        if on_step is not None:
            on_step(step, step / budget.per_epoch, value)
        if progress is not None:
            progress("train", step, budget.total)
        if curve.due(step, budget.total):
            curve.point(step)
    return losses


def train(
    model: nn.Module,
    tokenizer,
    task: Task,
    cfg: TrainConfig,
    *,
    theta_lr: float = 0.01,
    hold_zero: Mapping[str, torch.Tensor] | None = None,
    on_step: Callable[[int, float, float], None] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    evaluate_at_end: bool = True,
    head: Iterable[nn.Parameter] = (),
    curve_examples: Examples | None = None,
) -> TrainResult:
    """Train `model` on task.train for cfg.max_steps (or cfg.epochs), then evaluate on dev.

    A causal-LM task trains on next-token loss and is scored by loss and perplexity
    (`worker.finetune.causal`); the others on their labels.

    on_step(step, epoch, loss) runs after every optimizer step (trajectory recording);
    progress(phase, done, total) drives a progress bar. head: the parameters trained at
    cfg.head_lr. curve_examples: the held-out split of the learning curve (cfg.eval_every;
    default task.dev).
    """
    if cfg.engine == TrainEngine.TRAINER:
        losses, seconds, curve = _trainer_steps(
            model, tokenizer, task, cfg, theta_lr, hold_zero, on_step, progress, head,
            curve_examples,
        )  # fmt: skip
    else:
        losses, seconds, curve = _loop_steps(
            model, tokenizer, task, cfg, theta_lr, hold_zero, on_step, progress, head,
            curve_examples,
        )  # fmt: skip
    t1 = time.perf_counter()
    metrics = evaluate(model, tokenizer, task, cfg) if evaluate_at_end else {}
    return TrainResult(
        steps=len(losses),
        seconds=seconds,
        losses=losses,
        metrics=metrics,
        eval_seconds=time.perf_counter() - t1 + curve.seconds,
        trainable=count_trainable(model),
        curve=curve.points,
    )


def _loop_steps(
    model, tokenizer, task, cfg, theta_lr, hold_zero, on_step, progress, head, curve_examples
) -> tuple[list[float], float, LearningCurve]:
    """tinysub's own loop (TrainConfig.engine = "loop"): (losses, training seconds, curve)."""
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    model.to(device)
    model.train()
    budget = StepBudget.of(len(task.train), cfg)
    updater = build_updater(model, cfg, budget, theta_lr=theta_lr, head=head, hold_zero=hold_zero)
    curve = LearningCurve(model, tokenizer, task, cfg, curve_examples)
    if cfg.eval_every:
        curve.point(0)
    t0, before = time.perf_counter(), curve.seconds
    try:
        losses = train_steps(
            model, tokenizer, task, cfg, device, updater, budget, curve, on_step, progress
        )
    finally:
        updater.release()
    # Learning-curve evaluations are not training time.
    return losses, time.perf_counter() - t0 - (curve.seconds - before), curve


def _trainer_steps(
    model, tokenizer, task, cfg, theta_lr, hold_zero, on_step, progress, head, curve_examples
) -> tuple[list[float], float, LearningCurve]:
    """The same steps through the Hugging Face Trainer (TrainConfig.engine = "trainer"): the
    loop's batches, in its order, grad_accum of them per optimizer step."""
    from worker.finetune.hf_train import train_with_trainer  # noqa: PLC0415 - transformers: slow

    budget = StepBudget.of(len(task.train), cfg)
    order = torch.Generator().manual_seed(cfg.seed)
    batches = list(
        batch_order(len(task.train), cfg.batch_size, budget.total * cfg.grad_accum, order)
    )
    cpu = torch.device("cpu")  # accelerate moves each batch to the model's device

    def collate(idx: list[int]) -> dict[str, torch.Tensor]:
        return batch_inputs(tokenizer, task, list(idx), cfg, cpu)

    return train_with_trainer(
        model, tokenizer, task, cfg, collate, batches, theta_lr=theta_lr, head=head,
        hold_zero=hold_zero, on_step=on_step, progress=progress, curve_examples=curve_examples,
    )  # fmt: skip
