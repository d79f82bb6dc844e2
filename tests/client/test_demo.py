import numpy as np

from client.demo import DemoConfig, run_demo
from storage.basis import BasisStore
from storage.trajectory import TrajectoryStore
from worker.svd.gram import svd_basis


def test_demo_end_to_end_small(tmp_path):
    cfg = DemoConfig(workdir=tmp_path / "demo", epochs=3, train_size=64, rank=2, hidden=32)
    out = run_demo(cfg)
    store = TrajectoryStore.open(out["trajectory"]["url"])
    assert store.num_rows == 4  # theta0 + one row per epoch
    assert [r.epoch for r in store.rows[1:]] == [1.0, 2.0, 3.0]
    basis = BasisStore.open(out["bases"]["task"]["summary"]["url"])
    # The demo's basis is the exact basis of the stored trajectory.
    for layer in store.layout.group_names:
        ref = svd_basis(store.read_block(layer), 2, mode="delta")
        np.testing.assert_allclose(basis.load(layer), ref.v, atol=1e-6)
