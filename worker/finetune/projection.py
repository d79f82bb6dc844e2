"""Dense projections theta (k,) -> V theta (D,), and seeded random orthonormal bases.

V is a frozen buffer. In float32 the product is a plain `V @ theta`; autograd keeps a reference
to V (no copy) for the backward product V^T g. In float16 the product upcasts V a block of rows
at a time inside a custom autograd function, so neither pass ever holds a float32 copy of V:
scratch memory is O(block_rows * k) instead of O(D * k).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch import nn

from storage.errors import InvalidInput
from worker.svd.random_basis import random_orthonormal


class _BlockedHalfMatVec(torch.autograd.Function):
    """out = V.float() @ theta with V (D, k) in float16, computed block by block of rows."""

    @staticmethod
    def forward(ctx, basis: torch.Tensor, theta: torch.Tensor, block_rows: int) -> torch.Tensor:
        rows = basis.shape[0]
        out = torch.empty(rows, dtype=theta.dtype, device=theta.device)
        for a in range(0, rows, block_rows):
            out[a : a + block_rows] = basis[a : a + block_rows].to(theta.dtype) @ theta
        ctx.save_for_backward(basis)
        ctx.block_rows = block_rows
        ctx.theta_dtype = theta.dtype
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (basis,) = ctx.saved_tensors
        grad = torch.zeros(basis.shape[1], dtype=ctx.theta_dtype, device=grad_out.device)
        for a in range(0, basis.shape[0], ctx.block_rows):
            grad += (
                basis[a : a + ctx.block_rows].to(ctx.theta_dtype).T
                @ grad_out[a : a + ctx.block_rows]
            )
        return None, grad, None


class DenseProjection(nn.Module):
    """theta (k,) -> V diag(scale) theta (D,) with a frozen basis V (D, k) kept in float32 or
    float16. `scale` (k,), optional: per-direction factors (the trajectory's extent along each
    direction under theta_scale="extent"); without it the product is the paper's V theta."""

    def __init__(
        self,
        basis: np.ndarray | torch.Tensor,
        *,
        dtype: str = "float32",
        block_rows=1 << 16,
        scale: np.ndarray | torch.Tensor | None = None,
    ):
        super().__init__()
        v = torch.as_tensor(basis)
        if v.ndim != 2:
            raise InvalidInput(f"a basis must be 2-D (D, k), got shape {tuple(v.shape)}")
        if not torch.isfinite(v).all():
            raise InvalidInput("the basis holds NaN or Inf values")
        torch_dtype = {"float32": torch.float32, "float16": torch.float16}[dtype]
        if dtype == "float16" and v.abs().max() > torch.finfo(torch.float16).max:
            raise InvalidInput("the basis has entries beyond the float16 range; use float32")
        # Not persistent: a saved subspace run refers to V by sha256 instead of copying it.
        self.register_buffer("subspace_basis", v.to(torch_dtype).contiguous(), persistent=False)
        self.block_rows = int(block_rows)
        if scale is not None:
            scale = torch.as_tensor(np.asarray(scale, dtype=np.float32))
            if scale.shape != (v.shape[1],):
                raise InvalidInput(
                    f"a basis with {v.shape[1]} columns needs {v.shape[1]} scales, got "
                    f"{tuple(scale.shape)}"
                )
            if not (torch.isfinite(scale).all() and (scale > 0).all()):
                raise InvalidInput("direction scales must be finite and positive")
            self.register_buffer("subspace_scale", scale.contiguous(), persistent=False)
        else:
            self.subspace_scale = None

    @property
    def in_features(self) -> int:
        return self.subspace_basis.shape[1]

    @property
    def out_features(self) -> int:
        return self.subspace_basis.shape[0]

    def forward(self, theta: torch.Tensor) -> torch.Tensor:
        v = self.subspace_basis
        if self.subspace_scale is not None:
            theta = theta * self.subspace_scale
        if v.dtype == torch.float32:
            return v @ theta
        return _BlockedHalfMatVec.apply(v, theta.float(), self.block_rows)

    def dense(self) -> torch.Tensor:
        """V as a float32 (D, k) tensor."""
        return self.subspace_basis.float()


def random_orthonormal_bases(
    rows: dict[str, int], k: int, *, seed: int, scope: str = "layer"
) -> dict[str, torch.Tensor]:
    """Seeded random orthonormal bases of the given shapes: (D_l, k) float32 per layer.

    `rows` is layer name -> D_l in layout order; layer l's Gaussian is drawn from the stream of
    (seed, l), its position. The one generator of the project, worker.svd.random_basis (the
    registry's random bases come from it too): G_l (D_l, k) Gaussian, orthonormalized by Cholesky
    QR in float64, V = G R^-1 with R = chol(G^T G). With scope='global' the Gram is summed over
    layers, so the stacked [V_0; V_1; ...] is one orthonormal basis of the whole encoder and
    each V_l is its slice. Memory: one layer's G (float64) at a time plus the float32 outputs.
    """
    bases = random_orthonormal(rows, k, seed, scope=scope)
    return {name: torch.from_numpy(v) for name, v in bases.items()}


def tensor_sha256(t: torch.Tensor) -> str:
    """sha256 of a tensor's C-order float32 bytes (the same digest the basis store records)."""
    a = np.ascontiguousarray(t.detach().cpu().float().numpy(), dtype="<f4")
    return hashlib.sha256(memoryview(a).cast("B")).hexdigest()
