import math

import numpy as np
import pytest
import torch
from scipy.linalg import hadamard

from storage.errors import InvalidInput
from worker.finetune.fastfood import FastfoodProjection, fwht
from worker.finetune.projection import DenseProjection, random_orthonormal_bases


@pytest.mark.parametrize("n", [1, 2, 8, 64, 1024])
def test_fwht_matches_the_hadamard_matrix_and_is_orthogonal_up_to_scale(n):
    x = torch.randn(3, n, dtype=torch.float64)
    h = torch.from_numpy(hadamard(n).astype(np.float64))
    torch.testing.assert_close(fwht(x), x @ h)
    torch.testing.assert_close(fwht(fwht(x)), n * x)  # H H = n I
    torch.testing.assert_close(fwht(x).norm(dim=1), math.sqrt(n) * x.norm(dim=1))


def test_fwht_gradient_is_the_transform_itself():
    x = torch.randn(16, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fwht, (x,))


def test_fwht_refuses_other_lengths():
    with pytest.raises(InvalidInput, match="power-of-two"):
        fwht(torch.zeros(12))


def _dense_reference(p: FastfoodProjection) -> torch.Tensor:
    """Stack of scaled H G Pi H B blocks built as dense matrices, cut to D rows: (D, d)."""
    nb, n = p.subspace_sign.shape
    h = torch.from_numpy(hadamard(n).astype(np.float64))
    blocks = []
    for b in range(nb):
        pi = torch.zeros(n, n, dtype=torch.float64)
        pi[torch.arange(n), p.subspace_perm[b]] = 1.0  # (Pi x)_i = x_perm[i]
        m = (
            h
            @ torch.diag(p.subspace_gauss[b].double())
            @ pi
            @ h
            @ torch.diag(p.subspace_sign[b].double())
        )
        blocks.append(m[:, : p.dim] * p.subspace_scale[b].double())
    return torch.cat(blocks)[: p.rows]


@pytest.mark.parametrize(
    ("rows", "dim", "block"), [(16, 3, None), (50, 4, None), (40, 5, 8), (7, 7, None)]
)
def test_fastfood_matches_a_dense_reference(rows, dim, block):
    p = FastfoodProjection(rows, dim, seed=3, index=1, block=block)
    ref = _dense_reference(p)
    theta = torch.randn(dim)
    torch.testing.assert_close(p(theta).double(), ref @ theta.double(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(p.dense().double(), ref, atol=1e-5, rtol=1e-5)


def test_fastfood_columns_are_unit_norm_and_nearly_orthogonal():
    # One full block (D = n): every column has norm exactly 1 by construction; the Gram is
    # I + noise of order 1/sqrt(n).
    n, d = 4096, 8
    m = FastfoodProjection(n, d, seed=0).dense().double()
    gram = m.T @ m
    torch.testing.assert_close(
        torch.diag(gram), torch.ones(d, dtype=torch.float64), atol=1e-5, rtol=0
    )
    off = gram - torch.diag(torch.diag(gram))
    assert off.abs().max() < 6 / math.sqrt(n)
    # Cut to D < n rows the scale keeps the columns unit norm in expectation.
    m = FastfoodProjection(3000, d, seed=1).dense().double()
    assert abs(float((m**2).sum(0).mean()) - 1.0) < 0.05


def test_fastfood_is_seeded_and_differs_between_layers():
    a = FastfoodProjection(100, 4, seed=0, index=0)
    assert a.factors_sha256() == FastfoodProjection(100, 4, seed=0, index=0).factors_sha256()
    assert a.factors_sha256() != FastfoodProjection(100, 4, seed=0, index=1).factors_sha256()
    with pytest.raises(InvalidInput, match="smaller than"):
        FastfoodProjection(100, 20, seed=0, block=16)


def test_random_bases_are_orthonormal_seeded_and_global_when_asked():
    rows = {"layer.0": 300, "layer.1": 200}
    bases = random_orthonormal_bases(rows, 6, seed=4)
    for v in bases.values():
        torch.testing.assert_close(
            v.double().T @ v.double(), torch.eye(6, dtype=torch.float64), atol=1e-6, rtol=0
        )
    again = random_orthonormal_bases(rows, 6, seed=4)
    assert all(torch.equal(bases[k], again[k]) for k in rows)
    other = random_orthonormal_bases(rows, 6, seed=5)
    assert not torch.equal(bases["layer.0"], other["layer.0"])
    glob = random_orthonormal_bases(rows, 6, seed=4, scope="global")
    stacked = torch.cat([glob[k] for k in rows]).double()
    torch.testing.assert_close(
        stacked.T @ stacked, torch.eye(6, dtype=torch.float64), atol=1e-6, rtol=0
    )
    with pytest.raises(InvalidInput, match="fewer rows"):
        random_orthonormal_bases({"layer.0": 3}, 6, seed=0)


def test_half_precision_basis_computes_in_float32_blockwise():
    v = torch.linalg.qr(torch.randn(1000, 5))[0]
    full = DenseProjection(v)
    half = DenseProjection(v, dtype="float16", block_rows=96)
    assert half.subspace_basis.dtype == torch.float16
    theta = torch.randn(5, requires_grad=True)
    out = half(theta)
    assert out.dtype == torch.float32
    v16 = half.subspace_basis.float()
    torch.testing.assert_close(out, v16 @ theta, atol=1e-6, rtol=1e-6)  # exact up to fp32 sums
    # The float16 storage error is V's rounding: relative 2^-11 at most per entry.
    rel = ((out - full(theta)).norm() / full(theta).norm()).item()
    assert 0 < rel < 2**-10
    g = torch.randn(1000)
    (grad,) = torch.autograd.grad(out, theta, g)
    torch.testing.assert_close(grad, v16.T @ g, atol=1e-5, rtol=1e-5)


def test_dense_projection_refuses_bad_bases():
    with pytest.raises(InvalidInput):
        DenseProjection(np.zeros(5))
    with pytest.raises(InvalidInput, match="NaN"):
        DenseProjection(np.full((4, 2), np.nan))
