"""A plain torch training loop shared by every method, so their numbers compare.

AdamW with a linear decay (the defaults of the Transformers example script the paper used:
lr 5e-5, no warmup, no weight decay, gradient clipping at 1.0), up to three parameter groups:
the subspace vectors (names containing ``subspace_``) at ``theta_lr`` (0.01 in the paper), the
head (pooler and classifier, freshly initialized: it has to travel from its init, so it gets its
own ``head_lr``; a decoder's untied ``lm_head``) and everything else that trains (embeddings, or
all parameters for ``full``) at ``lr``. Seeds fix dropout, the data order and any freshly
initialized head.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from storage.errors import InvalidInput
from worker.finetune.causal import evaluate_lm, lm_batch
from worker.finetune.data import CAUSAL_LM, Examples, Task
from worker.finetune.metrics import evaluate_predictions
from worker.svd.backend import DEVICE_ENV

log = logging.getLogger(__name__)


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

    def to_dict(self) -> dict:
        return asdict(self)


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


def is_subspace_param(name: str) -> bool:
    return "subspace_" in name


def param_groups(
    model: nn.Module,
    lr: float,
    theta_lr: float,
    weight_decay: float = 0.0,
    *,
    head_lr: float | None = None,
    head: Iterable[nn.Parameter] = (),
) -> list[dict]:
    """Optimizer groups: subspace vectors at theta_lr, the `head` parameters at head_lr (when
    given), every other trainable parameter at lr."""
    head_ids = {id(p) for p in head} if head_lr is not None else set()
    theta, heads, rest = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if is_subspace_param(name):
            theta.append(p)
        elif id(p) in head_ids:
            heads.append(p)
        else:
            rest.append(p)
    groups = []
    if theta:
        groups.append({"params": theta, "lr": theta_lr, "weight_decay": 0.0, "name": "theta"})
    if heads:
        groups.append(
            {"params": heads, "lr": head_lr, "weight_decay": weight_decay, "name": "head"}
        )
    if rest:
        groups.append({"params": rest, "lr": lr, "weight_decay": weight_decay, "name": "base"})
    if not groups:
        raise InvalidInput("nothing to train: no parameter requires a gradient")
    return groups


def count_trainable(model: nn.Module) -> dict[str, int]:
    theta = sum(
        p.numel() for n, p in model.named_parameters() if p.requires_grad and is_subspace_param(n)
    )
    rest = sum(
        p.numel()
        for n, p in model.named_parameters()
        if p.requires_grad and not is_subspace_param(n)
    )
    return {"subspace": theta, "full_space": rest}


def encode(tokenizer, examples: Examples, idx, max_length: int, device: torch.device) -> dict:
    texts = [examples.texts[i] for i in idx]
    pairs = [examples.text_pairs[i] for i in idx] if examples.text_pairs else None
    batch = tokenizer(
        texts, pairs, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
    )
    return {k: v.to(device) for k, v in batch.items()}


class HeldZero:
    """Weights held at zero during training (the paper's disabling experiment, Table 3).

    masks: parameter name -> bool tensor of the parameter's shape (True = held at zero). The
    weights are zeroed before training, their gradients are masked by a hook, and they are
    zeroed again after every optimizer step (so no optimizer state can move them).
    """

    def __init__(self, model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
        self.params = {}
        self.hooks = []
        for name, mask in masks.items():
            p = model.get_parameter(name)
            if mask.shape != p.shape:
                raise InvalidInput(
                    f"mask of {name} has shape {tuple(mask.shape)}, not {tuple(p.shape)}"
                )
            mask = mask.to(device=p.device, dtype=torch.bool)
            self.params[name] = (p, mask)
            self.hooks.append(p.register_hook(lambda g, m=mask: g.masked_fill(m, 0.0)))
        self.apply()

    @torch.no_grad()
    def apply(self) -> None:
        for p, mask in self.params.values():
            p.masked_fill_(mask, 0.0)

    def count(self) -> int:
        return int(sum(m.sum() for _, m in self.params.values()))

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()


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


@dataclass(frozen=True)
class StepBudget:
    """How many optimizer steps a run takes, how many make an epoch (on_step reports the
    epoch as step / per_epoch) and how many of them warm the learning rate up."""

    per_epoch: int
    total: int
    warmup: int

    @classmethod
    def of(cls, n: int, cfg: TrainConfig) -> StepBudget:
        """The budget of `n` training examples: cfg.max_steps when set, else cfg.epochs."""
        per_epoch = math.ceil(n / cfg.batch_size)
        total = cfg.max_steps or cfg.epochs * per_epoch
        return cls(per_epoch=per_epoch, total=total, warmup=int(cfg.warmup_ratio * total))


def linear_schedule(total: int, warmup: int) -> Callable[[int], float]:
    """The learning-rate factor of each step: linear warmup, then linear decay to 0 (the
    Transformers default the paper used)."""

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    return schedule


@dataclass
class Updater:
    """One optimizer update after a batch's loss: gradients, clipping, the AdamW step, the
    schedule's step, and the held weights zeroed again (so no optimizer state moves them)."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    trainable: list[nn.Parameter]
    max_grad_norm: float | None
    held: HeldZero | None = None

    def apply(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.trainable, self.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        if self.held is not None:
            self.held.apply()

    def release(self) -> None:
        """Drop the gradient hooks of the held weights: the model outlives the run."""
        if self.held is not None:
            self.held.remove()


def build_updater(
    model: nn.Module,
    cfg: TrainConfig,
    budget: StepBudget,
    *,
    theta_lr: float,
    head: Iterable[nn.Parameter] = (),
    hold_zero: Mapping[str, torch.Tensor] | None = None,
) -> Updater:
    """AdamW over `param_groups` (theta, head, base: their order fixes the optimizer's) with
    the linear schedule; `hold_zero` weights are zeroed now and after every update."""
    groups = param_groups(
        model, cfg.lr, theta_lr, cfg.weight_decay, head_lr=cfg.head_lr, head=list(head)
    )
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, linear_schedule(budget.total, budget.warmup)
    )
    held = HeldZero(model, hold_zero) if hold_zero else None
    trainable = [p for p in model.parameters() if p.requires_grad]
    return Updater(optimizer, scheduler, trainable, cfg.max_grad_norm, held)


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
    if task.problem == CAUSAL_LM:
        return model(**lm_batch(tokenizer, task.train, idx, cfg.max_length, device)).loss
    labels_dtype = torch.float32 if task.problem == "regression" else torch.long
    batch = encode(tokenizer, task.train, idx, cfg.max_length, device)
    labels = torch.as_tensor(task.train.labels[idx], dtype=labels_dtype, device=device)
    return model(**batch, labels=labels).loss


def finite_loss(loss: torch.Tensor, step: int) -> float:
    """The loss as a float; a diverged run stops here rather than training on NaNs."""
    value = float(loss.detach())
    if not math.isfinite(value):
        raise InvalidInput(f"the loss became {value} at step {step}; lower the learning rates")
    return value


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
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    model.to(device)
    model.train()
    budget = StepBudget.of(len(task.train), cfg)
    updater = build_updater(model, cfg, budget, theta_lr=theta_lr, head=head, hold_zero=hold_zero)
    curve = LearningCurve(model, tokenizer, task, cfg, curve_examples)
    if cfg.eval_every:
        curve.point(0)
    t0 = time.perf_counter()
    try:
        losses = train_steps(
            model, tokenizer, task, cfg, device, updater, budget, curve, on_step, progress
        )
    finally:
        updater.release()
    # Learning-curve evaluations are not training time.
    seconds = time.perf_counter() - t0 - curve.seconds
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
