"""A `SubspaceModel` (or a plain model) trained by the Hugging Face `Trainer`.

`SubspaceTrainer` is a `transformers.Trainer` whose optimizer has tinysub's parameter groups
(worker.finetune.optimizer.param_groups): theta at `theta_lr`, the head (pooler, classifier,
an untied lm_head) at `head_lr`, everything else that trains at the Trainer's
`learning_rate`. All the rest is the Trainer's own: gradient accumulation, bf16/fp16 autocast,
gradient checkpointing, checkpoints and resume, `report_to`, several devices.

The Trainer chooses the columns a batch keeps from the model's forward signature; a
SubspaceModel's forward takes `**kwargs` and hands them to the base model, so the base model's
signature is the one inspected.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn
from transformers import Trainer

from storage.layout import layout_from_model
from worker.finetune.optimizer import param_groups
from worker.finetune.reparam import SubspaceModel, parameter_parts


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The base model's head (pooler, classifier, an untied lm_head): trained at head_lr."""
    base = model.base if isinstance(model, SubspaceModel) else model
    layout = model.layout if isinstance(model, SubspaceModel) else layout_from_model(base)
    return [
        base.get_parameter(n) for n, part in parameter_parts(base, layout).items() if part == "head"
    ]


class SubspaceTrainer(Trainer):
    """`Trainer` with theta, head and the other trainable parameters in their own groups."""

    def __init__(self, *args: Any, theta_lr: float, head_lr: float | None = None, **kwargs: Any):
        self.theta_lr = theta_lr
        self.head_lr = head_lr
        super().__init__(*args, **kwargs)

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            target = self.model if model is None else model
            groups = param_groups(
                target,
                self.args.learning_rate,
                self.theta_lr,
                self.args.weight_decay,
                head_lr=self.head_lr,
                head=head_parameters(target),
            )
            optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(
                self.args, target
            )
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    def _set_signature_columns_if_needed(self) -> None:
        if self._signature_columns is None and isinstance(self.model, SubspaceModel):
            forward = inspect.signature(self.model.base.forward)
            self._signature_columns = [*forward.parameters, "label", "label_ids", *self.label_names]
        super()._set_signature_columns_if_needed()
