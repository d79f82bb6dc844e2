"""The random baseline: orthonormal, seeded, block-generated, checksummed."""

from __future__ import annotations

import numpy as np
import pytest

from services import random_basis as rb
from storage.basis import BasisStore
from storage.errors import InvalidInput


def _q(d, k, seed, layer="layer.0"):
    out = np.empty((d, k), dtype=np.float32)

    def write(a, b, block):
        out[a:b] = block

    rb.random_orthonormal(d, k, seed, layer, write)
    return out


def test_block_rows_depend_on_k_only():
    assert rb.block_rows(32) == 1 << 16
    assert rb.block_rows(4096) == 512
    assert rb.block_rows(1 << 20) == 64
    assert rb.block_rows(1) == 1 << 16


@pytest.mark.parametrize("d, k", [(5, 5), (37, 3), (70_000, 4), (600, 4096 // 8)])
def test_orthonormal_and_equal_to_householder_qr(d, k, monkeypatch):
    monkeypatch.setattr(rb, "block_rows", lambda k: 97)  # many blocks, a ragged last one
    q = _q(d, k, seed=3).astype(np.float64)
    assert np.abs(q.T @ q - np.eye(k)).max() < 2e-6
    # The same Gaussian A stacked in memory: Q from Householder QR with R's diagonal > 0.
    a = np.concatenate(
        [rb._gaussian(3, "layer.0", c, min(97, d - s), k) for c, s in enumerate(range(0, d, 97))]
    )
    qh, r = np.linalg.qr(a)
    qh *= np.sign(np.diag(r))
    np.testing.assert_allclose(q, qh, atol=2e-6)


def test_seed_and_layer_determine_the_basis():
    assert np.array_equal(_q(300, 4, 1), _q(300, 4, 1))
    assert not np.allclose(_q(300, 4, 1), _q(300, 4, 2))
    assert not np.allclose(_q(300, 4, 1, "layer.0"), _q(300, 4, 1, "layer.1"))


def test_rank_above_size_is_refused(tmp_path):
    with pytest.raises(InvalidInput):
        _q(3, 4, 0)
    with pytest.raises(InvalidInput):
        rb.random_basis(str(tmp_path / "b"), {"layer.0": 3}, 4, 0)
    assert not (tmp_path / "b").exists()


def test_written_basis_is_committed_with_checksums(tmp_path):
    store = rb.random_basis(str(tmp_path / "b"), {"layer.0": 500, "layer.1": 70}, 6, 11)
    again = BasisStore.open(store.url)
    assert again.verify() == []
    assert again.manifest["kind"] == "random" and again.manifest["seed"] == 11
    np.testing.assert_array_equal(again.load("layer.1"), _q(70, 6, 11, "layer.1"))
    assert again.layer("layer.0").singular_values == [1.0] * 6
