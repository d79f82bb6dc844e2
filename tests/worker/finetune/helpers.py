"""Real bases for the tests: a short full fine-tuning trajectory of a tiny model, recorded in a
trajectory store, then turned into bases by the SVD worker."""

from __future__ import annotations

import torch

from storage.arrays import flatten_state
from storage.layout import layout_from_model
from storage.trajectory import TrajectoryStore
from tests.worker.finetune.conftest import make_batch


def record_trajectory(model, url: str, steps: int = 6, seed: int = 0, lr: float = 0.05):
    """theta0 plus `steps` SGD checkpoints of `model` on a fixed batch (model is trained)."""
    layout = layout_from_model(model)
    store = TrajectoryStore.create(url, layout, model_name="tiny", chunk_cols=512)
    store.append(flatten_state(model.state_dict(), layout), step=0)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    batch = make_batch(seed=seed)
    for step in range(1, steps + 1):
        opt.zero_grad()
        model(**batch).loss.backward()
        opt.step()
        store.append(flatten_state(model.state_dict(), layout), step=step)
    return store


def task_basis_for(model_factory, tmp_path, name: str = "basis", k: int = 4, scope="layer"):
    """A task basis (rank k) from a recorded trajectory of a fresh model from model_factory."""
    from worker.svd.bases import task_basis

    store = record_trajectory(model_factory(), str(tmp_path / f"traj-{name}"), steps=k + 2)
    report = task_basis(store.url, str(tmp_path / name), k, mode="delta", scope=scope)
    return report.bases[0]
