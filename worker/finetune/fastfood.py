"""The Fastfood projection of Le et al. (2013) as used by Li et al. (2018) and Aghajanyan et al.
(2021): theta^D = theta_0^D + M theta^d with M = H G Pi H B per block.

H is the (unnormalized) Walsh-Hadamard matrix of size n (a power of two), B a random +-1
diagonal, Pi a random permutation, G a diagonal of standard normals. theta (d,) is zero-padded to
n, and the outputs of ceil(D / n) independent blocks are stacked and cut to D rows. H is never
formed: the fast Walsh-Hadamard transform costs O(n log n) time and O(n) memory.

Scale: every column of one block's H G Pi H B has squared norm exactly n * sum(G^2) (the
columns of H are +-1 vectors), so dividing by sqrt(n * sum(G^2)) makes each block column unit
norm; cutting nb * n rows down to D keeps D / n of the squared norm in expectation, so the
stacked output is further divided by sqrt(D / n). The columns are then unit norm in
expectation and nearly orthogonal: M is a random, approximately orthonormal D x d map, like the
dense random basis, at O(D) memory instead of O(D d).
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import torch
from torch import nn

from storage.errors import InvalidInput


def next_pow2(n: int) -> int:
    return 1 << max(1, math.ceil(math.log2(max(n, 2))))


RADIX = 8  # butterflies of 8 points as one small matmul: fewer passes over memory than 2


def _hadamard(r: int, like: torch.Tensor) -> torch.Tensor:
    """The Sylvester Hadamard matrix H_r (r a power of two) as a tensor like `like`."""
    h = torch.ones(1, 1, dtype=like.dtype, device=like.device)
    while h.shape[0] < r:
        h = torch.cat((torch.cat((h, h), 1), torch.cat((h, -h), 1)), 0)
    return h


def _fwht(x: torch.Tensor) -> torch.Tensor:
    # H_n is the Kronecker product of H_2 over the log2(n) bits of the index, so it can be
    # applied a group of bits at a time: with the index split as (high, mid, low) and mid of
    # r values, multiplying the mid axis by H_r for successive groups low -> high gives H_n.
    # r = 8 does log8(n) passes instead of log2(n): about 6x faster for n = 2^21 on CPU,
    # still O(n log n) operations.
    n = x.shape[-1]
    lead = x.shape[:-1]
    h = 1
    while h < n:
        r = min(RADIX, n // h)
        y = x.reshape(*lead, n // (r * h), r, h)
        x = torch.matmul(_hadamard(r, x), y)
        h *= r
    return x.reshape(*lead, n)


class _FWHT(torch.autograd.Function):
    # H is symmetric, so the backward of y = H x is H g: no intermediate is saved, which keeps
    # the autograd memory at O(n) instead of O(n log n).
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return _fwht(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return _fwht(grad)


def fwht(x: torch.Tensor) -> torch.Tensor:
    """Unnormalized fast Walsh-Hadamard transform along the last dimension (a power of two).

    Equals x @ H_n with H_n = scipy.linalg.hadamard(n); H_n H_n = n I. O(n log n).
    """
    n = x.shape[-1]
    if n < 1 or n & (n - 1):
        raise InvalidInput(f"the Walsh-Hadamard transform needs a power-of-two length, got {n}")
    return _FWHT.apply(x)


class FastfoodProjection(nn.Module):
    """theta (d,) -> M theta (D,) with M the stacked, scaled Fastfood blocks H G Pi H B.

    Parameters
    ----------
    rows, dim:
        D and d.
    seed, index:
        The random factors come from a generator seeded by (seed, index), so every layer of a
        model gets independent factors and the same seed rebuilds the same projection.
    block:
        Block size n (a power of two, >= d). None: one block of the next power of two >= D.
    """

    def __init__(
        self, rows: int, dim: int, *, seed: int, index: int = 0, block: int | None = None
    ) -> None:
        super().__init__()
        if rows < 1 or dim < 1:
            raise InvalidInput(f"Fastfood needs D >= 1 and d >= 1, got D={rows}, d={dim}")
        n = next_pow2(rows) if block is None else int(block)
        if n & (n - 1):
            raise InvalidInput(f"Fastfood block size must be a power of two, got {n}")
        if n < dim:
            raise InvalidInput(f"Fastfood block size {n} is smaller than the dimension d={dim}")
        nb = math.ceil(rows / n)
        state = np.random.SeedSequence([int(seed), int(index), 0xFF]).generate_state(
            2, dtype=np.uint32
        )
        gen = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
        sign = torch.randint(0, 2, (nb, n), generator=gen).float() * 2 - 1  # B
        perm = torch.stack([torch.randperm(n, generator=gen) for _ in range(nb)])  # Pi
        gauss = torch.randn(nb, n, generator=gen)  # G
        scale = 1.0 / (torch.sqrt(n * (gauss**2).sum(dim=1)) * math.sqrt(rows / n))
        self.register_buffer("subspace_sign", sign, persistent=False)
        self.register_buffer("subspace_perm", perm, persistent=False)
        self.register_buffer("subspace_gauss", gauss, persistent=False)
        self.register_buffer("subspace_scale", scale, persistent=False)
        self.rows, self.dim, self.block = rows, dim, n

    @property
    def in_features(self) -> int:
        return self.dim

    @property
    def out_features(self) -> int:
        return self.rows

    def forward(self, theta: torch.Tensor) -> torch.Tensor:
        nb, n = self.subspace_sign.shape
        x = torch.nn.functional.pad(theta, (0, n - self.dim))  # (n,)
        x = self.subspace_sign * x  # B, broadcast to (nb, n)
        x = fwht(x)  # H
        x = torch.gather(x, 1, self.subspace_perm)  # Pi: x_i <- x_perm[i]
        x = self.subspace_gauss * x  # G
        x = fwht(x)  # H
        x = x * self.subspace_scale[:, None]
        return x.reshape(-1)[: self.rows]

    def factors_sha256(self) -> str:
        """sha256 of B, Pi and G: the identity of this projection."""
        h = hashlib.sha256()
        for t in (self.subspace_sign, self.subspace_perm, self.subspace_gauss):
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    def dense(self) -> torch.Tensor:
        """M as a dense (D, d) float32 tensor (for tests and analysis of small layers)."""
        eye = torch.eye(self.dim)
        return torch.stack([self.forward(eye[j]) for j in range(self.dim)], dim=1)
