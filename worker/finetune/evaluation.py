"""Scoring a model on held-out examples: batched predictions, the task's metrics, and the
learning curve's points during training."""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from worker.finetune.causal import evaluate_lm
from worker.finetune.metrics import evaluate_predictions
from worker.finetune.task_types import CAUSAL_LM, Examples, Task
from worker.finetune.train_config import TrainConfig


def encode(tokenizer, examples: Examples, idx, max_length: int, device: torch.device) -> dict:
    texts = [examples.texts[i] for i in idx]
    pairs = [examples.text_pairs[i] for i in idx] if examples.text_pairs else None
    batch = tokenizer(
        texts, pairs, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
    )
    return {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def predict(model: nn.Module, tokenizer, examples: Examples, cfg: TrainConfig) -> np.ndarray:
    """Logits (n, c) or regression scores (n, 1) of the model on `examples`, in eval mode."""
    device = next(model.parameters()).device
    if hasattr(model, "merge"):
        # A subspace model evaluates as its merged copy: V theta once, not once per batch.
        model = model.merge()
    was_training = model.training
    model.eval()
    out = []
    for a in range(0, len(examples), cfg.eval_batch_size):
        idx = range(a, min(a + cfg.eval_batch_size, len(examples)))
        out.append(
            model(**encode(tokenizer, examples, idx, cfg.max_length, device)).logits.float().cpu()
        )
    model.train(was_training)
    return torch.cat(out).numpy()


def evaluate(
    model: nn.Module, tokenizer, task: Task, cfg: TrainConfig, examples: Examples | None = None
) -> dict[str, float]:
    examples = examples if examples is not None else task.dev
    if task.problem == CAUSAL_LM:
        return evaluate_lm(model, tokenizer, examples, cfg.max_length, cfg.eval_batch_size)
    return evaluate_predictions(
        task.problem, predict(model, tokenizer, examples, cfg), examples.labels
    )


class LearningCurve:
    """Held-out scores at step 0 and every cfg.eval_every steps (and the last step). Their
    time is kept apart: learning-curve evaluations are not training time."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        task: Task,
        cfg: TrainConfig,
        examples: Examples | None = None,
    ) -> None:
        self.model, self.tokenizer, self.task, self.cfg = model, tokenizer, task, cfg
        self.held_out = examples if examples is not None else task.dev
        self.points: list[dict] = []
        self.seconds = 0.0

    def due(self, step: int, total: int) -> bool:
        every = self.cfg.eval_every
        return bool(every) and (step % every == 0 or step == total)

    def point(self, at: int) -> None:
        e0 = time.perf_counter()
        scores = evaluate(self.model, self.tokenizer, self.task, self.cfg, self.held_out)
        self.points.append({"step": at, **scores})
        self.seconds += time.perf_counter() - e0
