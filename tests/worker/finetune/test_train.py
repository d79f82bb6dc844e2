"""The pieces of the training loop (worker.finetune.train): step budget, schedule, data order,
optimizer update, loss check and learning-curve timing."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from storage.errors import InvalidInput
from worker.finetune.train import (
    LearningCurve,
    StepBudget,
    TrainConfig,
    batch_order,
    build_updater,
    finite_loss,
    linear_schedule,
)


class Tiny(nn.Module):
    """A base weight, a head and a subspace vector: one parameter of each optimizer group."""

    def __init__(self) -> None:
        super().__init__()
        self.base = nn.Linear(3, 3, bias=False)
        self.head = nn.Linear(3, 1, bias=False)
        self.subspace_theta = nn.Parameter(torch.zeros(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.base(x) + self.subspace_theta).sum()


def test_step_budget_counts_epochs_or_max_steps():
    assert StepBudget.of(20, TrainConfig(batch_size=8, epochs=2)) == StepBudget(3, 6, 0)
    assert StepBudget.of(20, TrainConfig(batch_size=8, max_steps=5, warmup_ratio=0.5)) == (
        StepBudget(per_epoch=3, total=5, warmup=2)
    )


def test_linear_schedule_warms_up_then_decays_to_zero():
    schedule = linear_schedule(total=6, warmup=2)
    assert [schedule(s) for s in range(7)] == [0.5, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0]
    assert [linear_schedule(4, 0)(s) for s in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]


def test_batch_order_draws_one_permutation_per_epoch():
    order = torch.Generator().manual_seed(3)
    got = list(batch_order(5, 2, 7, order))
    gen = torch.Generator().manual_seed(3)
    want = []
    for _ in range(3):  # 3 batches per epoch; the third epoch is cut after one batch
        perm = torch.randperm(5, generator=gen).tolist()
        want += [perm[0:2], perm[2:4], perm[4:5]]
    assert got == want[:7]
    # No permutation is drawn past the last batch.
    assert torch.equal(order.get_state(), gen.get_state())
    exact = torch.Generator().manual_seed(3)
    assert len(list(batch_order(5, 2, 6, exact))) == 6
    two_epochs = torch.Generator().manual_seed(3)
    for _ in range(2):
        torch.randperm(5, generator=two_epochs)
    assert torch.equal(exact.get_state(), two_epochs.get_state())


def test_build_updater_orders_groups_and_keeps_held_weights_at_zero():
    torch.manual_seed(0)
    model = Tiny()
    mask = torch.zeros(3, 3, dtype=torch.bool)
    mask[0, 1] = True
    cfg = TrainConfig(lr=0.1, head_lr=0.2)
    updater = build_updater(
        model,
        cfg,
        StepBudget.of(4, cfg),
        theta_lr=0.3,
        head=model.head.parameters(),
        hold_zero={"base.weight": mask},
    )
    groups = updater.optimizer.param_groups
    assert [(g["name"], g["lr"]) for g in groups] == [("theta", 0.3), ("head", 0.2), ("base", 0.1)]
    assert model.base.weight[0, 1] == 0
    before = model.base.weight.detach().clone()
    updater.apply(model(torch.ones(2, 3)))
    assert model.base.weight[0, 1] == 0
    assert not torch.equal(model.base.weight, before)
    updater.release()  # the hook that masks the held weights' gradient is gone
    model.zero_grad()
    model(torch.ones(2, 3)).backward()
    assert model.base.weight.grad[0, 1] != 0


def test_finite_loss_stops_a_diverged_run():
    assert finite_loss(torch.tensor(0.5), 1) == 0.5
    with pytest.raises(InvalidInput, match="at step 4"):
        finite_loss(torch.tensor(math.nan), 4)


def test_learning_curve_is_due_every_eval_every_steps_and_at_the_end():
    off = LearningCurve(Tiny(), None, None, TrainConfig(), examples=object())
    assert not any(off.due(s, 10) for s in range(11))
    curve = LearningCurve(Tiny(), None, None, TrainConfig(eval_every=4), examples=object())
    assert [s for s in range(1, 11) if curve.due(s, 10)] == [4, 8, 10]
