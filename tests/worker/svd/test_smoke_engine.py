import numpy as np

from storage.basis import BasisStore
from worker.svd.bases import task_basis
from worker.svd.gram import svd_basis


def test_store_basis_equals_in_memory_basis(tiny_store, tmp_path):
    report = task_basis(tiny_store.url, str(tmp_path / "basis"), 4, mode="delta")
    basis = BasisStore.open(report.bases[0].url)
    for g in tiny_store.layout.group_names:
        w = tiny_store.read_block(g)
        ref = svd_basis(w, 4, mode="delta")
        np.testing.assert_array_equal(basis.load(g), ref.v)
