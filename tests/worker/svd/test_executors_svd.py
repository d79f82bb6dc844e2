"""Both routes on a real Dask cluster give the bytes of the local executor and of memory."""

from __future__ import annotations

import pytest

from storage.basis import BasisStore
from tests.promised import import_or_skip_missing
from tests.worker.svd.spectra import delta_trajectory, one_group_store
from worker.executors import LocalExecutor
from worker.svd.bases import task_basis
from worker.svd.gram import svd_basis
from worker.svd.method import GramMethod, RandomizedMethod

pytestmark = pytest.mark.integration


def test_dask_cluster_gives_the_local_bytes_for_both_methods(tmp_path):
    import_or_skip_missing("dask", "dask.distributed")
    from worker.executors.dask import DaskExecutor

    # 39 vectors of a 1e3-conditioned spectrum over 8 blocks: summing the block Grams in
    # another order changes ~35 of the 39000 float32 entries, so this checks the order too.
    w = delta_trajectory(40, 1000, 1e3)
    store = one_group_store(tmp_path / "traj", w, 128)
    runs = [("gram", "delta", 39), ("gram", "raw", 40), ("randomized", "delta", 8)]
    layers = {}
    with LocalExecutor(2) as local, DaskExecutor(workers=2) as dask:
        for name, ex in (("local", local), ("dask", dask)):
            for method, mode, k in runs:
                report = task_basis(
                    store.url,
                    str(tmp_path / f"{name}-{method}-{mode}"),
                    k,
                    mode=mode,
                    selection=list(range(40)) if mode == "raw" else None,
                    method=GramMethod() if method == "gram" else RandomizedMethod(power_iters=1),
                    executor=ex,
                    block_cols=128,
                )
                layers[name, method, mode] = BasisStore.open(report.bases[0].url).layer("layer.0")
    for method, mode, _ in runs:
        assert layers["local", method, mode].sha256 == layers["dask", method, mode].sha256
    mem = svd_basis(w, 39, mode="delta", chunk_cols=128)
    stored = BasisStore.open(str(tmp_path / "dask-gram-delta")).load("layer.0")
    assert stored.tobytes() == mem.v.tobytes()
