"""The random baseline: orthonormal, seeded, block-generated, checksummed, and the same bytes as
the fine-tuning worker's random basis (one generator: worker.svd.random_basis)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from services import random_basis as rb
from storage.basis import BasisStore
from storage.errors import InvalidInput
from tests.services.helpers import layer_bytes, run_jobs
from worker.finetune.projection import random_orthonormal_bases, tensor_sha256
from worker.finetune.sources import RandomBasisSource
from worker.svd.random_basis import layer_generator, random_orthonormal


def _q(tmp_path, d, k, seed, *, name="layer.0"):
    store = rb.random_basis(str(tmp_path / f"q-{d}-{k}-{seed}-{name}"), {name: d}, k, seed)
    return store.load(name)


def test_block_rows_depend_on_k_only():
    assert rb.block_rows(32) == 1 << 16
    assert rb.block_rows(4096) == 512
    assert rb.block_rows(1 << 20) == 256
    assert rb.block_rows(1) == 1 << 16


@pytest.mark.parametrize("d, k", [(5, 5), (37, 3), (70_000, 4), (600, 4096 // 8)])
def test_orthonormal_and_equal_to_householder_qr(d, k, monkeypatch, tmp_path):
    monkeypatch.setattr(rb, "block_rows", lambda k: 256)  # many blocks, a ragged last one
    q = _q(tmp_path, d, k, seed=3).astype(np.float64)
    assert np.abs(q.T @ q - np.eye(k)).max() < 2e-6
    # The same Gaussian A drawn at once: Q from Householder QR with R's diagonal > 0.
    a = torch.randn(d, k, generator=layer_generator(3, 0), dtype=torch.float64).numpy()
    qh, r = np.linalg.qr(a)
    qh *= np.sign(np.diag(r))
    np.testing.assert_allclose(q, qh, atol=2e-6)


def test_seed_and_layer_index_determine_the_basis(tmp_path):
    a = rb.random_basis(str(tmp_path / "a"), {"layer.0": 300, "layer.1": 300}, 4, 1)
    b = rb.random_basis(str(tmp_path / "b"), {"other.0": 300, "other.1": 300}, 4, 1)
    c = rb.random_basis(str(tmp_path / "c"), {"layer.0": 300, "layer.1": 300}, 4, 2)
    # A layer is its position in the layout: renaming keeps the bytes, the index changes them.
    assert np.array_equal(a.load("layer.1"), b.load("other.1"))
    assert not np.allclose(a.load("layer.0"), a.load("layer.1"))
    assert not np.allclose(a.load("layer.0"), c.load("layer.0"))


def test_rank_above_size_is_refused(tmp_path):
    with pytest.raises(InvalidInput):
        random_orthonormal({"layer.0": 3}, 4, 0)
    with pytest.raises(InvalidInput):
        rb.random_basis(str(tmp_path / "b"), {"layer.0": 3}, 4, 0)
    assert not (tmp_path / "b").exists()


def test_written_basis_is_committed_with_checksums(tmp_path):
    shapes = {"layer.0": 500, "layer.1": 70}
    store = rb.random_basis(str(tmp_path / "b"), shapes, 6, 11)
    again = BasisStore.open(store.url)
    assert again.verify() == []
    assert again.manifest["kind"] == "random" and again.manifest["seed"] == 11
    assert again.manifest["generator"] == "gaussian+cholesky-qr/1"
    held = random_orthonormal(shapes, 6, 11)
    for name in shapes:
        np.testing.assert_array_equal(again.load(name), held[name])
    assert again.layer("layer.0").singular_values == [1.0] * 6


def test_the_registry_serves_the_workers_random_basis(api, app, layout):
    """One seed, two paths: the registry's job (order -> kernel -> store -> served bytes) and
    the fine-tuning worker's `--method random` source give the same bytes and sha256."""
    api.post("/v1/tasks", json={"id": "r", "model": "tiny", "layout": layout.to_dict()})
    r = api.post("/v1/tasks/r/bases", json={"kind": "random", "rank": 5, "seed": 7})
    assert r.status_code == 202, r.text
    run_jobs(app)
    manifest = api.get("/v1/tasks/r/bases/random").json()
    served = layer_bytes(api, manifest)

    rows = {g.name: g.size for g in layout.groups}
    assert len(rows) > 1  # the layer index matters
    worker = random_orthonormal_bases(rows, 5, seed=7)
    source = RandomBasisSource(layout, 5, seed=7).reference()["layers"]
    assert list(served) == list(rows)
    for info in manifest["layers"]:
        name = info["name"]
        assert served[name] == worker[name].numpy().astype("<f4").tobytes(), name
        assert info["sha256"] == tensor_sha256(worker[name]) == source[name]["sha256"], name
