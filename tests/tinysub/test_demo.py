import numpy as np
import pytest

from storage.errors import InvalidInput
from storage.trajectory import TrajectoryStore
from tinysub.demo import DemoConfig, run_demo, toy_task
from worker.svd.gram import svd_basis


def test_demo_end_to_end_through_the_registry(tmp_path):
    cfg = DemoConfig(
        workdir=tmp_path / "demo",
        epochs=3,
        train_size=64,
        rank=2,
        hidden=32,
        finetune_model="tiny-bert",
        finetune_task=toy_task(tmp_path),
        finetune_steps=6,
        finetune_record_every=2,
        finetune_rank=3,
    )
    out = run_demo(cfg)
    store = TrajectoryStore.open(out["trajectory"]["url"])
    assert store.num_rows == 4  # theta0 + one row per epoch
    assert [r.epoch for r in store.rows[1:]] == [1.0, 2.0, 3.0]
    assert set(out["bases"]) == {"task", "global", "random"}
    task = out["bases"]["task"]
    # What the registry computed, served and the client cached is the exact basis of the
    # local trajectory.
    for layer in store.layout.group_names:
        d, k = next(i["shape"] for i in task["manifest"]["layers"] if i["name"] == layer)
        pulled = np.fromfile(task["files"][layer], dtype="<f4").reshape(d, k)
        ref = svd_basis(store.read_block(layer), 2, mode="delta")
        np.testing.assert_allclose(pulled, ref.v, atol=1e-6)
    rnd = out["bases"]["random"]
    for layer, path in rnd["files"].items():
        d, k = next(i["shape"] for i in rnd["manifest"]["layers"] if i["name"] == layer)
        v = np.fromfile(path, dtype="<f4").reshape(d, k).astype(np.float64)
        np.testing.assert_allclose(v.T @ v, np.eye(k), atol=1e-5)
    # Stage 2: subspace fine-tuning in the pulled basis, posted back to the registry.
    ft = out["finetune"]
    assert ft["rows"] == 4 and ft["rank"] == 3  # theta0 + steps 2, 4, 6
    runs = ft["runs"]
    assert set(runs) == {"full", "intrinsic", "random"}
    for method in ("intrinsic", "random"):
        # 16 ensemble vectors of dim 3 per layer; both pulled from and posted to the registry
        assert runs[method]["trainable"]["subspace"] == 16 * 3 * 2
        assert runs[method]["posted"] is True
    assert runs["full"]["trainable"]["subspace"] == 0


def test_demo_refuses_a_rank_above_the_epochs_before_training(tmp_path):
    cfg = DemoConfig(workdir=tmp_path / "demo", epochs=2, rank=3)
    with pytest.raises(InvalidInput, match="rank 3"):
        run_demo(cfg)
    assert not (tmp_path / "demo" / "trajectory").exists()
