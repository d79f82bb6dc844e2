"""Where the dense products run: torch on a GPU when present, torch on the CPU, else numpy.

The kernels only need two products on float64 sub-blocks: X X^T (the Gram) and X^T M (the
projection). The projection runs in torch (MKL/oneDNN on the CPU, cuBLAS on a GPU); numpy is
the fallback for hosts that install tinysub without torch (a registry host that only serves
bases).

On the CPU the Gram runs in numpy, whatever the device, so that a basis does not depend on how
many BLAS threads computed it. MKL (torch's CPU BLAS) splits the long inner dimension of a
skinny Gram (n x c times c x n, n ~ 32, c ~ 8192) across its threads and adds the partial sums
in an order that depends on the thread count: measured here, G differs by 6e-10 (relative
2e-15) between 1 and 2 threads, enough to change the last bits of V. Dask and Ray workers run
BLAS on one thread and the local executor's threads on several, so the same job would give
different bytes on different executors. OpenBLAS (numpy) partitions only the *output* of a
level-3 product across threads and computes X X^T as a SYRK (half the flops of a GEMM), so its
Gram is bit-identical for any thread count. The projection X^T M has a large output and a short
inner dimension (n), which MKL partitions by rows: also thread-count independent (tested).
"""

from __future__ import annotations

import os
from functools import lru_cache

import numpy as np

from storage.errors import InvalidInput

try:  # torch is optional on serving hosts
    import torch
except ImportError:  # pragma: no cover - exercised only on torch-less installs
    torch = None

DEVICE_ENV = "TINYSUB_DEVICE"


def resolve_device(device: str | None = None) -> str:
    """The device products run on: 'cuda' (or 'cuda:N') when a GPU is present, 'cpu' for torch
    on the CPU, 'numpy' when torch is not installed or when asked for.

    `device` wins over the TINYSUB_DEVICE environment variable, which wins over 'auto'.
    TINYSUB_DEVICE=cpu forces the CPU on a GPU host.
    """
    want = (device or os.environ.get(DEVICE_ENV) or "auto").strip().lower()
    return _resolve(want)


@lru_cache(maxsize=16)
def _resolve(want: str) -> str:
    # Cached per request, not per call: torch.cuda.is_available() initialises the CUDA driver.
    if want not in ("auto", "cpu", "numpy", "cuda") and not want.startswith("cuda:"):
        raise InvalidInput(f"device {want!r} is not one of auto, cpu, numpy, cuda, cuda:N")
    if torch is None:
        if want not in ("auto", "cpu", "numpy"):
            raise InvalidInput(f"device {want!r} needs torch, which is not installed")
        return "numpy"
    if want == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if want.startswith("cuda") and not torch.cuda.is_available():
        raise InvalidInput(f"device {want!r} was asked for but CUDA is not available")
    return want


# Columns per float64 sub-block: 32 rows x 8192 x 8 bytes = 2 MiB, small enough to stay in
# cache between the float32 -> float64 conversion and the product (measured: 2048-32768 are
# within 10% of each other on the CPU; 8192 was fastest).
SUB_BLOCK = 8192


class Products:
    """Accumulating float64 products over one column block of X (n, c)."""

    def __init__(self, device: str | None = None) -> None:
        self.device = resolve_device(device)

    def gram(
        self, block: np.ndarray, refs: list[tuple[slice, np.ndarray]] | None = None
    ) -> np.ndarray:
        """G = X X^T in float64, where X = block with each ref row subtracted from its rows.

        The subtraction happens in float64, so a delta of float32 values is exact. On the CPU
        (devices 'cpu' and 'numpy') this is `gram_numpy`, on a GPU `gram_torch`.
        """
        if self.device.startswith("cuda"):
            return gram_torch(block, refs, self.device)
        return gram_numpy(block, refs)

    def project(
        self, block: np.ndarray, m: np.ndarray, refs: list[tuple[slice, np.ndarray]] | None = None
    ) -> np.ndarray:
        """V = X^T M (c, k) computed in float64, returned as float32."""
        if self.device == "numpy":
            return project_numpy(block, m, refs)
        return project_torch(block, m, refs, self.device)


# The loops below convert each sub-block into one float64 buffer allocated per call, and
# write products into another, instead of allocating ~2 MiB temporaries per sub-block: glibc
# keeps freed blocks of that size in per-thread arenas, and with several threads the process'
# resident memory grew to many times what a task uses (measured: 190 MB instead of 60 MB for
# 8 MB blocks on two threads).


def gram_numpy(block: np.ndarray, refs: list[tuple[slice, np.ndarray]] | None = None) -> np.ndarray:
    """The CPU Gram: an OpenBLAS SYRK per sub-block, added up in column order.

    The same bits for any number of BLAS threads (see the module docstring).
    """
    n, c = block.shape
    g = np.zeros((n, n))
    buf = np.empty((n, min(SUB_BLOCK, c)))
    for a in range(0, c, SUB_BLOCK):
        x = _as64_numpy(block[:, a : a + SUB_BLOCK], _cut(refs, a), buf)  # (n, sub) C-order
        g += x @ x.T  # numpy calls SYRK for x @ x.T and mirrors the triangle
    return g


def project_numpy(
    block: np.ndarray, m: np.ndarray, refs: list[tuple[slice, np.ndarray]] | None = None
) -> np.ndarray:
    """V = X^T M with numpy, float64 products rounded once to float32. (c, k)"""
    n, c = block.shape
    out = np.empty((c, m.shape[1]), dtype=np.float32)
    buf = np.empty((n, min(SUB_BLOCK, c)))
    prod = np.empty((min(SUB_BLOCK, c), m.shape[1]))
    for a in range(0, c, SUB_BLOCK):
        x = _as64_numpy(block[:, a : a + SUB_BLOCK], _cut(refs, a), buf)
        w = x.shape[1]
        np.matmul(x.T, m, out=prod[:w])
        out[a : a + w] = prod[:w]
    return out


def gram_torch(
    block: np.ndarray, refs: list[tuple[slice, np.ndarray]] | None, device: str
) -> np.ndarray:
    """The GPU Gram (cuBLAS gives the same bits run to run on one GPU model). Also runs on
    device='cpu', which is how the tests check it on hosts without a GPU."""
    n, c = block.shape
    g = torch.zeros((n, n), dtype=torch.float64, device=device)
    buf = torch.empty((n, min(SUB_BLOCK, c)), dtype=torch.float64, device=device)
    for a in range(0, c, SUB_BLOCK):
        x = _as64_torch(block[:, a : a + SUB_BLOCK], _cut(refs, a), buf)  # (n, sub)
        g.addmm_(x, x.T)
    return g.cpu().numpy()


def project_torch(
    block: np.ndarray, m: np.ndarray, refs: list[tuple[slice, np.ndarray]] | None, device: str
) -> np.ndarray:
    """V = X^T M with torch (CPU or GPU), float64 products rounded once to float32. (c, k)"""
    n, c = block.shape
    out = np.empty((c, m.shape[1]), dtype=np.float32)
    out_t = torch.from_numpy(out)
    mt = torch.from_numpy(np.ascontiguousarray(m, dtype=np.float64)).to(device)
    buf = torch.empty((n, min(SUB_BLOCK, c)), dtype=torch.float64, device=device)
    prod = torch.empty((min(SUB_BLOCK, c), m.shape[1]), dtype=torch.float64, device=device)
    for a in range(0, c, SUB_BLOCK):
        x = _as64_torch(block[:, a : a + SUB_BLOCK], _cut(refs, a), buf)
        w = x.shape[1]
        torch.mm(x.T, mt, out=prod[:w])
        out_t[a : a + w].copy_(prod[:w])  # rounds to float32 (and copies off the GPU)
    return out


def _as64_numpy(
    x32: np.ndarray, refs: list[tuple[slice, np.ndarray]] | None, buf: np.ndarray
) -> np.ndarray:
    """x32 (n, w) in float64, in `buf` when it has exactly w columns (a fresh array for the
    short last sub-block), minus each ref row; the subtraction is exact in float64."""
    x = buf if buf.shape[1] == x32.shape[1] else np.empty(x32.shape)
    np.copyto(x, x32)
    for rows, ref in refs or ():
        x[rows] -= ref
    return x


def _as64_torch(x32: np.ndarray, refs: list[tuple[slice, np.ndarray]] | None, buf):
    if buf.shape[1] != x32.shape[1]:
        buf = torch.empty(x32.shape, dtype=buf.dtype, device=buf.device)
    x = buf
    x.copy_(torch.from_numpy(x32))
    for rows, ref in refs or ():
        x[rows] -= torch.from_numpy(np.ascontiguousarray(ref)).to(buf.device)
    return x


def _cut(refs, a):
    if not refs:
        return None
    return [(rows, ref[a : a + SUB_BLOCK]) for rows, ref in refs]
