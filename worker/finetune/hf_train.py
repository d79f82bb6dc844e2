"""A run's training steps through the Hugging Face `Trainer` (TrainConfig.engine = "trainer").

The same run as tinysub's own loop (worker.finetune.train): the same batches in the same order
(one permutation of the examples per epoch from the seed), the same parameter groups (theta at
theta_lr, the head at head_lr, the rest at lr: `SubspaceTrainer`), the same linear schedule,
clipping, weights held at zero, trajectory recording and learning curve. What the Trainer adds
is its own: gradient accumulation (`grad_accum` batches per optimizer step), bf16/fp16
autocast, gradient checkpointing, `report_to` loggers and accelerate's device placement.

The batches are tinysub's, not the Trainer's sampler's, so that the data order is the seed's and
an epoch's last, shorter batch stays its own (a sampler would run it into the next epoch).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from transformers import PrinterCallback, TrainerCallback, TrainingArguments

from storage.errors import InvalidInput
from worker.finetune.evaluation import LearningCurve
from worker.finetune.optimizer import HeldZero, StepBudget, linear_schedule
from worker.finetune.task_types import Examples, Task
from worker.finetune.train_config import TrainConfig, resolve_device, seed_everything
from worker.finetune.trainer import SubspaceTrainer

StepHook = Callable[[int, float, float], None]
Progress = Callable[[str, int, int], None]


class _Indices(Dataset):
    """Example i is its index: the collator tokenizes a whole batch of indices at once."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


class _RunTrainer(SubspaceTrainer):
    """SubspaceTrainer fed tinysub's batches and schedule, keeping each batch's loss."""

    def __init__(self, *args: Any, batches: list[list[int]], schedule: Callable, **kwargs: Any):
        self.batches, self.schedule = batches, schedule
        self.micro_losses: list[float] = []
        super().__init__(*args, **kwargs)
        # Each batch's loss is the model's mean over it, and the Trainer divides it by the
        # accumulation steps itself: the step's loss is then the mean of its batches' losses,
        # as in the loop, whatever the base model's forward accepts.
        self.model_accepts_loss_kwargs = False

    def get_train_dataloader(self) -> DataLoader:
        # Its own generator: a DataLoader draws a base seed when it starts iterating, which
        # from torch's global generator would shift every dropout mask against the loop's.
        loader = DataLoader(
            self.train_dataset,
            batch_sampler=self.batches,
            collate_fn=self.data_collator,
            generator=torch.Generator(),
        )
        return self.accelerator.prepare(loader)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None:
            target = self.optimizer if optimizer is None else optimizer
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(target, self.schedule)
        return self.lr_scheduler

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss = out[0] if return_outputs else out
        self.micro_losses.append(float(loss.detach()))
        return out


class _StepHooks(TrainerCallback):
    """After every optimizer step: the step's loss (a diverged run stops), the held weights
    zeroed again, the trajectory hook, the progress bar and the learning curve's points."""

    def __init__(
        self,
        trainer: _RunTrainer,
        budget: StepBudget,
        curve: LearningCurve,
        held: HeldZero | None,
        on_step: StepHook | None,
        progress: Progress | None,
    ) -> None:
        self.trainer, self.budget, self.curve, self.held = trainer, budget, curve, held
        self.on_step, self.progress = on_step, progress
        self.losses: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step
        batch = self.trainer.micro_losses
        value = sum(batch) / max(1, len(batch))
        batch.clear()
        if value != value or value in (float("inf"), float("-inf")):
            raise InvalidInput(f"the loss became {value} at step {step}; lower the learning rates")
        self.losses.append(value)
        if self.held is not None:
            self.held.apply()
        if self.on_step is not None:
            self.on_step(step, step / self.budget.per_epoch, value)
        if self.progress is not None:
            self.progress("train", step, self.budget.total)
        if self.curve.due(step, self.budget.total):
            self.curve.point(step)
        return control


def _arguments(cfg: TrainConfig, budget: StepBudget, device: torch.device, out: str):
    return TrainingArguments(
        output_dir=out,
        max_steps=budget.total,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm or 0.0,
        optim="adamw_torch",
        seed=cfg.seed,
        bf16=cfg.precision == "bf16",
        fp16=cfg.precision == "fp16",
        activation_checkpointing=cfg.gradient_checkpointing,
        report_to=list(cfg.report_to) or "none",
        use_cpu=device.type == "cpu",
        save_strategy="no",
        logging_strategy="no" if not cfg.report_to else "steps",
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
    )


def train_with_trainer(
    model: nn.Module,
    tokenizer,
    task: Task,
    cfg: TrainConfig,
    collate: Callable[[list[int]], dict[str, torch.Tensor]],
    batches: list[list[int]],
    *,
    theta_lr: float,
    head: Iterable[nn.Parameter] = (),
    hold_zero: Mapping[str, torch.Tensor] | None = None,
    on_step: StepHook | None = None,
    progress: Progress | None = None,
    curve_examples: Examples | None = None,
) -> tuple[list[float], float, LearningCurve]:
    """Train `model` on `batches` (cfg.grad_accum of them per optimizer step) and return
    (each step's loss, training seconds without learning-curve time, the learning curve)."""
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    model.to(device)
    model.train()
    budget = StepBudget.of(len(task.train), cfg)
    held = HeldZero(model, hold_zero) if hold_zero else None
    curve = LearningCurve(model, tokenizer, task, cfg, curve_examples)
    if cfg.eval_every:
        curve.point(0)
    try:
        with tempfile.TemporaryDirectory(prefix="tinysub-trainer-") as out:
            trainer = _RunTrainer(
                model=model,
                args=_arguments(cfg, budget, device, out),
                train_dataset=_Indices(len(task.train)),
                data_collator=collate,
                theta_lr=theta_lr,
                head_lr=cfg.head_lr,
                batches=batches,
                schedule=linear_schedule(budget.total, budget.warmup),
            )
            hooks = _StepHooks(trainer, budget, curve, held, on_step, progress)
            trainer.add_callback(hooks)
            # With tqdm off, the Trainer prints its end-of-run figures to stdout: the run's
            # record holds them, and a CLI's stdout may be JSON.
            trainer.remove_callback(PrinterCallback)
            t0, before = time.perf_counter(), curve.seconds
            trainer.train()
            # Learning-curve evaluations are not training time.
            seconds = time.perf_counter() - t0 - (curve.seconds - before)
    finally:
        if held is not None:
            held.remove()
        # accelerate wraps the forward of a model trained under autocast; the trained model
        # must evaluate, merge and save as an ordinary module.
        vars(model).pop("forward", None)
    return hooks.losses, seconds, curve
