"""The settings of a training run (`TrainConfig`) and where and how reproducibly it runs
(`resolve_device`, `seed_everything`)."""

from __future__ import annotations

import os
import random
from dataclasses import asdict, dataclass

import numpy as np
import torch

from storage.errors import InvalidInput
from storage.vocabulary import TrainEngine, parse
from worker.svd.backend import DEVICE_ENV

PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class TrainConfig:
    lr: float = 5e-5
    batch_size: int = 16
    epochs: int = 1
    max_steps: int | None = None  # overrides epochs when set
    max_length: int = 64
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    max_grad_norm: float | None = 1.0
    seed: int = 0
    eval_batch_size: int = 64
    device: str = "auto"  # auto | cpu | cuda
    # Learning rate of the head (pooler, classifier); None trains it at `lr`.
    head_lr: float | None = None
    # Learning curve: evaluate on a held-out split every this many steps (None: only at the end).
    eval_every: int | None = None
    # Who runs the steps: "trainer" (the Hugging Face Trainer, worker.finetune.hf_train) or
    # "loop" (tinysub's own loop, worker.finetune.train; the paper run's ledger was made by it).
    engine: TrainEngine = TrainEngine.TRAINER
    # Trainer-only settings (the loop refuses them rather than ignoring them).
    grad_accum: int = 1  # batches per optimizer step
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast)
    gradient_checkpointing: bool = False
    report_to: tuple[str, ...] = ()  # e.g. ("tensorboard",), ("mlflow",), ("wandb",)

    def __post_init__(self) -> None:
        if not self.lr > 0 or self.batch_size < 1 or self.epochs < 1 or self.max_length < 2:
            raise InvalidInput(
                "lr must be positive, batch_size and epochs at least 1, max_length at least 2"
            )
        if self.head_lr is not None and not self.head_lr > 0:
            raise InvalidInput(f"head_lr must be positive, got {self.head_lr}")
        if self.eval_every is not None and self.eval_every < 1:
            raise InvalidInput(f"eval_every must be at least 1, got {self.eval_every}")
        if self.max_steps is not None and self.max_steps < 1:
            raise InvalidInput(f"max_steps must be at least 1, got {self.max_steps}")
        if not 0 <= self.warmup_ratio < 1:
            raise InvalidInput(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise InvalidInput(f"device {self.device!r} is not auto, cpu or cuda[:N]")
        self._check_engine()

    def _check_engine(self) -> None:
        object.__setattr__(self, "engine", parse(TrainEngine, self.engine, "engine"))
        if self.precision not in PRECISIONS:
            raise InvalidInput(f"precision {self.precision!r} is not one of {list(PRECISIONS)}")
        if self.grad_accum < 1:
            raise InvalidInput(f"grad_accum must be at least 1, got {self.grad_accum}")
        object.__setattr__(self, "report_to", tuple(self.report_to))
        trainer_only = {
            "grad_accum": self.grad_accum != 1,
            "precision": self.precision != "fp32",
            "gradient_checkpointing": self.gradient_checkpointing,
            "report_to": bool(self.report_to),
        }
        asked = [name for name, on in trainer_only.items() if on]
        if self.engine == TrainEngine.LOOP and asked:
            raise InvalidInput(f"{', '.join(asked)} need engine 'trainer', not 'loop'")

    def to_dict(self) -> dict:
        return asdict(self)


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch: dropout and any freshly initialized head depend on it."""
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """'auto' is CUDA when torch sees a GPU, unless TINYSUB_DEVICE (the kernels' setting,
    worker/svd/backend.py) names a device: TINYSUB_DEVICE=cpu keeps a GPU host's fine-tuning
    on the CPU too. An explicit `name` wins over the variable."""
    if name == "auto":
        name = (os.environ.get(DEVICE_ENV) or "auto").strip().lower()
        name = "cpu" if name == "numpy" else name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name != "cpu" and not name.startswith("cuda"):
        raise InvalidInput(f"device {name!r} is not auto, cpu or cuda[:N]")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InvalidInput("device cuda was asked for but torch sees no GPU")
    return torch.device(name)
