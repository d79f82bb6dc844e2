"""The theta training rule on a task whose answer is known: more dimensions must never hurt.

The model is a one-layer linear regressor laid out like an encoder layer (`encoder.layer.0.`),
so it goes through the real path: trajectory store -> delta basis -> `prepare("intrinsic")` ->
`SubspaceModel`. The data are y = x . w* + noise with fewer training examples than weights.
Gradient descent from w0 records the trajectory; its spectrum falls steeply, as real fine-tuning
trajectories do, and its weak directions mostly fit the noise of the few training examples.

Adam moves every theta coordinate by about its learning rate per step. Under the paper's plain
V theta that means a step as long along a direction with sigma_k = 1e-4 sigma_1 as along v_1,
so each added dimension adds error: the defect the default rule (theta_scale="extent")
removes. Held-out error must not grow with the dimension under the default rule, with one
learning rate for every dimension, which is how a user runs `tinysub finetune --dim k`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from storage.arrays import flatten_state
from storage.basis import BasisStore
from storage.layout import layout_from_model
from storage.trajectory import TrajectoryStore
from worker.finetune.config import SubspaceConfig
from worker.finetune.methods import prepare
from worker.finetune.sources import StoreBasisSource
from worker.finetune.train import param_groups

D, N_TRAIN, N_TEST, ROWS, BATCH = 200, 400, 2000, 24, 16
DIMS = (1, 2, 4, 8, 16, 24)


class _Layer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dense = nn.Linear(D, 1, bias=False)


class _Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.ModuleList([_Layer()])


class LinearRegressor(nn.Module):
    """y = x . w, with w stored where the bert grouping rule finds an encoder layer."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = _Encoder()
        with torch.no_grad():
            self.encoder.layer[0].dense.weight.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder.layer[0].dense(x).squeeze(-1)


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    gen = torch.Generator().manual_seed(0)
    w_star = torch.randn(D, generator=gen) / D**0.5
    x_train, x_test = torch.randn(N_TRAIN, D, generator=gen), torch.randn(N_TEST, D, generator=gen)
    y_train = x_train @ w_star + 0.5 * torch.randn(N_TRAIN, generator=gen)
    y_test = x_test @ w_star
    model = LinearRegressor()
    layout = layout_from_model(model, "bert")
    tmp = tmp_path_factory.mktemp("rule")
    store = TrajectoryStore.create(str(tmp / "traj"), layout, model_name="linear", chunk_cols=128)
    store.append(flatten_state(model.state_dict(), layout), step=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for step in range(1, ROWS + 1):
        for _ in range(10):  # minibatch SGD: a trajectory of full rank, a falling spectrum
            idx = torch.randint(0, N_TRAIN, (BATCH,), generator=gen)
            loss = nn.functional.mse_loss(model(x_train[idx]), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        store.append(flatten_state(model.state_dict(), layout), step=step)
    from worker.svd.bases import task_basis

    basis = task_basis(store.url, str(tmp / "basis"), ROWS, mode="delta").bases[0].url
    return (x_train, y_train), (x_test, y_test), basis


def _held_out_error(problem, dim: int, rule: str, lr: float = 0.1, steps: int = 60) -> float:
    (x_train, y_train), (x_test, y_test), basis = problem
    source = StoreBasisSource(BasisStore.open(basis))
    cfg = SubspaceConfig(rank=dim, theta_scale=rule, train_parts=(), init="zeros", theta_lr=lr)
    model = prepare("intrinsic", LinearRegressor(), cfg, source=source)
    opt = torch.optim.Adam(param_groups(model, 1e-3, lr))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / steps)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        # Minibatch gradients, as in fine-tuning: along a direction the loss hardly depends on,
        # Adam's normalized steps are a random walk of step ~lr.
        idx = torch.randint(0, N_TRAIN, (BATCH,), generator=gen)
        loss = nn.functional.mse_loss(model(x_train[idx]), y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        return float(nn.functional.mse_loss(model(x_test), y_test))


def test_the_trajectory_spectrum_falls_steeply(problem):
    s = np.array(BasisStore.open(problem[2]).layer("layer.0").singular_values)
    assert s[-1] < 1e-2 * s[0] and s.size == ROWS


def test_more_dimensions_never_hurt_under_the_default_rule(problem):
    assert SubspaceConfig().theta_scale == "extent"
    start = float(problem[1][1].pow(2).mean())  # the error of w0 = 0
    errors = {k: _held_out_error(problem, k, "extent") for k in DIMS}
    assert errors[DIMS[-1]] < 0.8 * start, (start, errors)  # the subspace really learns
    for small, large in zip(DIMS, DIMS[1:], strict=False):
        assert errors[large] <= errors[small] * 1.01, errors


def test_the_paper_rule_gets_worse_as_the_dimension_grows(problem):
    """The defect itself, at the same learning rate: plain V theta loses with more dims, and
    at the full dimension it is worse than the default rule."""
    plain = {k: _held_out_error(problem, k, "none") for k in (2, DIMS[-1])}
    assert plain[DIMS[-1]] > plain[2], plain
    assert _held_out_error(problem, DIMS[-1], "extent") < plain[DIMS[-1]]
