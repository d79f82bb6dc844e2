"""Where the dense products run: torch on a GPU when present, torch on the CPU, else numpy.

The kernels need a few products on float64 sub-blocks: X X^T (the Gram), X^T M (the
projection), and for randomized SVD X Omega and X (X^T M). The projection runs in torch
(MKL/oneDNN on the CPU, cuBLAS on a GPU); numpy is the fallback for hosts that install tinysub
without torch (a registry host that only serves bases).

On the CPU every product runs in torch on ONE intra-op thread per calling thread; parallelism
comes from running blocks side by side (the executors, or the thread pool of the in-memory
route). Two reasons, both measured on this project's 2-core machines:
- Determinism. MKL splits the long inner dimension of a skinny Gram (n x c times c x n,
  n ~ 32, c ~ 8192) across its threads and adds the partial sums in an order that depends on
  the thread count (G differed by 6e-10 between 1 and 2 threads), and Dask and Ray workers run
  one BLAS thread while a local process may run several: the same job would give different
  bytes on different executors. One thread per product gives the same bits everywhere.
- Speed. Multi-threaded BLAS on few cores collapses when anything else is busy: a 32 x 7M
  float64 Gram took 0.36 s on one torch thread and 11 s on two while the other core was loaded
  (OpenMP threads spin-waiting on each other); numpy's OpenBLAS, 0.47 s single-threaded, is
  slower than MKL for these shapes (projection 0.73 s against ~0.25 s).
torch.set_num_threads is per calling thread (an OpenMP ICV), so `single_thread()` scopes it
to the kernel call and restores the caller's setting afterwards.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from functools import lru_cache
from typing import Any, TypeAlias, cast

import numpy as np

from storage.errors import InvalidInput
from worker.executors.base import DEVICE_ENV

try:  # torch is optional on serving hosts
    import torch
except ImportError:  # pragma: no cover - exercised only on torch-less installs
    # mypy types `torch` as the module: an optional import cannot be a module or None to it.
    torch = None  # type: ignore[assignment]


# (rows of the block, the row to subtract from them in float64): theta0 for delta mode
Refs = list[tuple[slice, np.ndarray]]
# The rows Z of one column block: float32 rows (n, c), refs, and the shift row appended after
# them in raw mode (else None). Chunk tasks read one from a store; the in-memory routes slice it.
RowBlock = tuple[np.ndarray, Refs | None, np.ndarray | None]
# A float64 matrix where the randomized products run: np.ndarray on 'numpy', else a torch.Tensor
# on the device. The code below uses only operators both have (@, *, +, .T, .sum, .shape).
DeviceArray: TypeAlias = Any


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
# On a GPU a sub-block of 8,192 columns is a 1 MB copy and a microsecond kernel: launch and
# transfer latency dominated (H200, t = 32, D = 7M: 2.4 s, slower than 16 CPU cores). 2^18
# columns per step (32 MB float32 over PCIe, one float64 GEMM) costs the same memory as a
# CPU task's block. GPU bases are bit-stable run to run on one GPU model, not equal to CPU bits.
GPU_SUB_BLOCK = 1 << 18


def sub_block(device: str) -> int:
    """Columns per product step on `device` (numpy and the CPU keep 8,192: their bits)."""
    return GPU_SUB_BLOCK if device.startswith("cuda") else SUB_BLOCK


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """torch on one intra-op thread for the calling thread, restored afterwards (see the module
    docstring: deterministic bits and no spin-waiting on shared cores)."""
    if torch is None:
        yield
        return
    before = torch.get_num_threads()
    if before != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if before != 1:
            torch.set_num_threads(before)


class Products:
    """Accumulating float64 products over one column block of X (n, c)."""

    def __init__(self, device: str | None = None) -> None:
        self.device = resolve_device(device)

    def gram(
        self, block: np.ndarray, refs: Refs | None = None, append: np.ndarray | None = None
    ) -> np.ndarray:
        """G = X X^T in float64, where X = block with each ref row subtracted from its rows
        (and `append` as one more row).

        The subtraction happens in float64, so a delta of float32 values is exact.
        """
        if self.device == "numpy":
            return gram_numpy(block, refs, append)
        with single_thread():
            return gram_torch(block, refs, self.device, append)

    def project(
        self,
        block: np.ndarray,
        m: np.ndarray,
        refs: Refs | None = None,
        append: np.ndarray | None = None,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """V = X^T M (c, k) computed in float64, returned as float32 (written into `out`, a
        C-contiguous (c, k) float32 view, when given: no second copy of V)."""
        if self.device == "numpy":
            return project_numpy(block, m, refs, append, out)
        with single_thread():
            return project_torch(block, m, refs, self.device, append, out)

    # ---------------------------------------------------------------- randomized SVD
    @property
    def _rdev(self) -> str:
        return self.device

    def _as64(self, x32: np.ndarray, refs: Refs | None, append: np.ndarray | None) -> DeviceArray:
        n = x32.shape[0] + (append is not None)
        if self._rdev == "numpy":
            return _as64_numpy(x32, refs, np.empty((n, x32.shape[1])), append)
        buf = torch.empty((n, x32.shape[1]), dtype=torch.float64, device=self._rdev)
        return _as64_torch(x32, refs, buf, append)

    def _dev(self, a: np.ndarray) -> DeviceArray:
        """A small float64 matrix on the device."""
        a = np.ascontiguousarray(a, dtype=np.float64)
        return a if self._rdev == "numpy" else torch.from_numpy(a).to(self._rdev)

    def _host(self, x: DeviceArray) -> np.ndarray:
        return cast(np.ndarray, x if self._rdev == "numpy" else x.cpu().numpy())

    def sketch(
        self,
        block: np.ndarray,
        omega: Callable[[int, int], np.ndarray],
        e: np.ndarray,
        refs: Refs | None = None,
        append: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """See `_sketch`; one intra-op thread on the CPU."""
        with single_thread():
            return self._sketch(block, omega, e, refs, append)

    def _sketch(
        self,
        block: np.ndarray,
        omega: Callable[[int, int], np.ndarray],
        e: np.ndarray,
        refs: Refs | None = None,
        append: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The first pass of a randomized SVD over one column block of X (n, c), in float64.

        omega(a, b) gives rows [a, b) of this block's test matrix, (b - a, l); e (n, r) holds
        a few row-weight vectors. Returns Y = X Omega (n, l), the squared row norms of X (n,)
        and X X^T e (n, r): enough for the total energy |T X|_F^2 of a selection, centring or
        shift of the rows without the whole Gram.
        """
        c = block.shape[1]
        n = block.shape[0] + (append is not None)
        ed = self._dev(e)
        y = sq = ge = None
        step = sub_block(self._rdev)
        for a in range(0, c, step):
            x = self._as64(block[:, a : a + step], _cut(refs, a, step), _cut1(append, a, step))
            b = a + x.shape[1]
            yb = x @ self._dev(omega(a, b))
            sqb = (x * x).sum(1)
            geb = x @ (x.T @ ed)  # (n, r)
            y, sq, ge = (yb, sqb, geb) if y is None else (y + yb, sq + sqb, ge + geb)
        if y is None:  # an empty block
            return np.zeros((n, omega(0, 0).shape[1])), np.zeros(n), np.zeros(e.shape)
        return self._host(y), self._host(sq), self._host(ge)

    def power(
        self,
        block: np.ndarray,
        m: np.ndarray,
        refs: Refs | None = None,
        append: np.ndarray | None = None,
        *,
        rayleigh: bool = False,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """See `_power`; one intra-op thread on the CPU."""
        with single_thread():
            return self._power(block, m, refs, append, rayleigh=rayleigh)

    def _power(
        self,
        block: np.ndarray,
        m: np.ndarray,
        refs: Refs | None = None,
        append: np.ndarray | None = None,
        *,
        rayleigh: bool = False,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Z = X X^T M (n, L) over one column block, and with rayleigh=True also
        C = (X^T M)^T (X^T M) (L, L), in float64: one power iteration / Rayleigh-Ritz step."""
        c = block.shape[1]
        n = block.shape[0] + (append is not None)
        md = self._dev(m)
        z = cc = None
        step = sub_block(self._rdev)
        for a in range(0, c, step):
            x = self._as64(block[:, a : a + step], _cut(refs, a, step), _cut1(append, a, step))
            xm = x.T @ md  # (sub, L)
            zb = x @ xm
            z = zb if z is None else z + zb
            if rayleigh:
                cb = xm.T @ xm
                cc = cb if cc is None else cc + cb
        if z is None:
            return np.zeros((n, m.shape[1])), (np.zeros((m.shape[1],) * 2) if rayleigh else None)
        return self._host(z), (self._host(cc) if rayleigh else None)


# The loops below convert each sub-block into one float64 buffer allocated per call, and
# write products into another, instead of allocating ~2 MiB temporaries per sub-block: glibc
# keeps freed blocks of that size in per-thread arenas, and with several threads the process'
# resident memory grew to many times what a task uses (measured: 190 MB instead of 60 MB for
# 8 MB blocks on two threads).


def gram_numpy(
    block: np.ndarray, refs: Refs | None = None, append: np.ndarray | None = None
) -> np.ndarray:
    """The CPU Gram: an OpenBLAS SYRK per sub-block, added up in column order.

    The same bits for any number of BLAS threads (see the module docstring).
    """
    c = block.shape[1]
    n = block.shape[0] + (append is not None)
    g = np.zeros((n, n))
    buf = np.empty((n, min(SUB_BLOCK, c)))
    for a in range(0, c, SUB_BLOCK):
        x = _as64_numpy(block[:, a : a + SUB_BLOCK], _cut(refs, a), buf, _cut1(append, a))
        g += x @ x.T  # numpy calls SYRK for x @ x.T and mirrors the triangle
    return g


def project_numpy(
    block: np.ndarray,
    m: np.ndarray,
    refs: Refs | None = None,
    append: np.ndarray | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """V = X^T M with numpy, float64 products rounded once to float32. (c, k)"""
    c = block.shape[1]
    n = block.shape[0] + (append is not None)
    out = np.empty((c, m.shape[1]), dtype=np.float32) if out is None else out
    buf = np.empty((n, min(SUB_BLOCK, c)))
    prod = np.empty((min(SUB_BLOCK, c), m.shape[1]))
    for a in range(0, c, SUB_BLOCK):
        x = _as64_numpy(block[:, a : a + SUB_BLOCK], _cut(refs, a), buf, _cut1(append, a))
        w = x.shape[1]
        np.matmul(x.T, m, out=prod[:w])
        out[a : a + w] = prod[:w]
    return out


def gram_torch(
    block: np.ndarray, refs: Refs | None, device: str, append: np.ndarray | None = None
) -> np.ndarray:
    """The GPU Gram (cuBLAS gives the same bits run to run on one GPU model). Also runs on
    device='cpu', which is how the tests check it on hosts without a GPU."""
    c = block.shape[1]
    n = block.shape[0] + (append is not None)
    step = sub_block(device)
    g = torch.zeros((n, n), dtype=torch.float64, device=device)
    buf = torch.empty((n, min(step, c)), dtype=torch.float64, device=device)
    for a in range(0, c, step):
        x = _as64_torch(block[:, a : a + step], _cut(refs, a, step), buf, _cut1(append, a, step))
        g.addmm_(x, x.T)
    return g.cpu().numpy()


def project_torch(
    block: np.ndarray,
    m: np.ndarray,
    refs: Refs | None,
    device: str,
    append: np.ndarray | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """V = X^T M with torch (CPU or GPU), float64 products rounded once to float32. (c, k)"""
    c = block.shape[1]
    n = block.shape[0] + (append is not None)
    out = np.empty((c, m.shape[1]), dtype=np.float32) if out is None else out
    out_t = torch.from_numpy(out)
    step = sub_block(device)
    mt = torch.from_numpy(np.ascontiguousarray(m, dtype=np.float64)).to(device)
    buf = torch.empty((n, min(step, c)), dtype=torch.float64, device=device)
    prod = torch.empty((min(step, c), m.shape[1]), dtype=torch.float64, device=device)
    on_gpu = device != "cpu"
    for a in range(0, c, step):
        x = _as64_torch(block[:, a : a + step], _cut(refs, a, step), buf, _cut1(append, a, step))
        w = x.shape[1]
        torch.mm(x.T, mt, out=prod[:w])
        if on_gpu:  # round on the device: half the bytes over PCIe
            out_t[a : a + w].copy_(prod[:w].to(torch.float32))
        else:
            out_t[a : a + w].copy_(prod[:w])  # rounds to float32
    return out


def _as64_numpy(
    x32: np.ndarray, refs: Refs | None, buf: np.ndarray, append: np.ndarray | None = None
) -> np.ndarray:
    """x32 (n, w) in float64, in `buf` when it has exactly w columns (a fresh array for the
    short last sub-block), minus each ref row (exact in float64), then `append` (the raw-mode
    shift row) as a last row, written straight into the buffer."""
    n, w = x32.shape
    rows_out = n + (append is not None)
    x = buf if buf.shape[1] == w else np.empty((rows_out, w))
    np.copyto(x[:n], x32)
    for rows, ref in refs or ():
        x[rows] -= ref
    if append is not None:
        x[n] = append
    return x


def _as64_torch(
    x32: np.ndarray, refs: Refs | None, buf: torch.Tensor, append: np.ndarray | None = None
) -> torch.Tensor:
    n, w = x32.shape
    if buf.shape[1] != w:
        buf = torch.empty((n + (append is not None), w), dtype=buf.dtype, device=buf.device)
    x = buf
    x32_t = torch.from_numpy(np.ascontiguousarray(x32))
    if buf.device.type != "cpu":
        x32_t = x32_t.to(buf.device)  # float32 over PCIe, widened to float64 on the device
    x[:n].copy_(x32_t)
    for rows, ref in refs or ():
        x[rows] -= torch.from_numpy(np.ascontiguousarray(ref)).to(buf.device)
    if append is not None:
        x[n].copy_(torch.from_numpy(np.ascontiguousarray(append)))
    return x


def _cut(refs: Refs | None, a: int, step: int = SUB_BLOCK) -> Refs | None:
    if not refs:
        return None
    return [(rows, ref[a : a + step]) for rows, ref in refs]


def _cut1(row: np.ndarray | None, a: int, step: int = SUB_BLOCK) -> np.ndarray | None:
    return None if row is None else row[a : a + step]
