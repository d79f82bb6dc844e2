"""The optimizer side of a training run: parameter groups and their learning rates, the step
budget and schedule, weights held at zero, and one AdamW update after a batch's loss."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from storage.errors import InvalidInput
from worker.finetune.train_config import TrainConfig


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
