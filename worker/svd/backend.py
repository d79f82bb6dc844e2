"""Where the dense products run: torch on a GPU when present, torch on the CPU, else numpy.

The kernels need a few products on float64 sub-blocks: X X^T (the Gram), X^T M (the
projection), and for randomized SVD X Omega and X (X^T M). torch's CPU BLAS (MKL/oneDNN) runs
the skinny float64 products about twice as fast as numpy's OpenBLAS here, and the same code runs
on CUDA; numpy is the fallback for hosts that install tinysub without torch (a registry host
that only serves bases).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import lru_cache

import numpy as np

try:  # torch is optional on serving hosts
    import torch
except ImportError:  # pragma: no cover - exercised only on torch-less installs
    torch = None


@lru_cache(maxsize=8)
def resolve_device(device: str | None = None) -> str:
    """'cuda' when a GPU is present (unless TINYSUB_DEVICE or `device` says otherwise),
    'cpu' for torch on the CPU, 'numpy' when torch is not installed."""
    want = (device or os.environ.get("TINYSUB_DEVICE") or "auto").lower()
    if torch is None:
        if want not in ("auto", "cpu", "numpy"):
            raise RuntimeError(f"device {want!r} needs torch, which is not installed")
        return "numpy"
    if want == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if want.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {want!r} was asked for but CUDA is not available")
    return want


# Columns per float64 sub-block: 32 rows x 8192 x 8 bytes = 2 MiB, small enough to stay in
# cache between the float32 -> float64 conversion and the product (measured: 2048-32768 are
# within 10% of each other on the CPU; 8192 was fastest).
SUB_BLOCK = 8192

# (rows of the block, the row to subtract from them in float64): theta0 for delta mode
Refs = list[tuple[slice, np.ndarray]]
# The rows Z of one column block: float32 rows (n, c), refs, and the shift row appended after
# them in raw mode (else None). Chunk tasks read one from a store; the in-memory routes slice it.
RowBlock = tuple[np.ndarray, Refs | None, np.ndarray | None]


class Products:
    """Accumulating float64 products over one column block of X (n, c)."""

    def __init__(self, device: str | None = None) -> None:
        self.device = resolve_device(device)

    def _as64(self, x32: np.ndarray, refs: Refs | None, append: np.ndarray | None = None):
        """The float64 sub-block: refs subtracted from their rows, then `append` (the raw-mode
        shift row) as a last row, written straight into the float64 buffer rather than by
        copying the whole float32 block."""
        n, c = x32.shape
        extra = append is not None
        if self.device == "numpy":
            x = np.empty((n + extra, c))
            x[:n] = x32
            for rows, ref in refs or ():
                x[rows] -= ref.astype(np.float64)
            if extra:
                x[n] = append
            return x
        x = torch.empty((n + extra, c), dtype=torch.float64, device=self.device)
        x[:n] = torch.from_numpy(np.ascontiguousarray(x32)).to(self.device)
        for rows, ref in refs or ():
            x[rows] -= torch.from_numpy(np.ascontiguousarray(ref)).to(self.device, torch.float64)
        if extra:
            x[n] = torch.from_numpy(np.ascontiguousarray(append)).to(self.device)
        return x

    def gram(
        self, block: np.ndarray, refs: Refs | None = None, append: np.ndarray | None = None
    ) -> np.ndarray:
        """G = X X^T in float64, where X = block with each ref row subtracted from its rows
        (and `append` as one more row).

        The subtraction happens in float64, so a delta of float32 values is exact.
        """
        c = block.shape[1]
        n = block.shape[0] + (append is not None)
        if self.device == "numpy":
            g = np.zeros((n, n))
            for a in range(0, c, SUB_BLOCK):
                x = self._as64(block[:, a : a + SUB_BLOCK], _cut(refs, a), _cut1(append, a))
                g += x @ x.T
            return g
        g = torch.zeros((n, n), dtype=torch.float64, device=self.device)
        for a in range(0, c, SUB_BLOCK):
            x = self._as64(block[:, a : a + SUB_BLOCK], _cut(refs, a), _cut1(append, a))
            g.addmm_(x, x.T)
        return g.cpu().numpy()

    def project(
        self,
        block: np.ndarray,
        m: np.ndarray,
        refs: Refs | None = None,
        append: np.ndarray | None = None,
    ) -> np.ndarray:
        """V = X^T M (c, k) computed in float64, returned as float32."""
        c = block.shape[1]
        out = np.empty((c, m.shape[1]), dtype=np.float32)
        if self.device == "numpy":
            for a in range(0, c, SUB_BLOCK):
                x = self._as64(block[:, a : a + SUB_BLOCK], _cut(refs, a), _cut1(append, a))
                out[a : a + x.shape[1]] = x.T @ m
            return out
        mt = torch.from_numpy(np.ascontiguousarray(m, dtype=np.float64)).to(self.device)
        res = torch.from_numpy(out) if self.device == "cpu" else None
        for a in range(0, c, SUB_BLOCK):
            x = self._as64(block[:, a : a + SUB_BLOCK], _cut(refs, a), _cut1(append, a))
            v = (x.T @ mt).to(torch.float32)
            if res is not None:
                res[a : a + v.shape[0]] = v
            else:
                out[a : a + v.shape[0]] = v.cpu().numpy()
        return out

    # ---------------------------------------------------------------- randomized SVD
    def _dev(self, a: np.ndarray):
        """A small float64 matrix on the device."""
        a = np.ascontiguousarray(a, dtype=np.float64)
        return a if self.device == "numpy" else torch.from_numpy(a).to(self.device)

    def _host(self, x) -> np.ndarray:
        return x if self.device == "numpy" else x.cpu().numpy()

    def sketch(
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
        for a in range(0, c, SUB_BLOCK):
            x = self._as64(block[:, a : a + SUB_BLOCK], _cut(refs, a), _cut1(append, a))
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
        """Z = X X^T M (n, L) over one column block, and with rayleigh=True also
        C = (X^T M)^T (X^T M) (L, L), in float64: one power iteration / Rayleigh-Ritz step."""
        c = block.shape[1]
        n = block.shape[0] + (append is not None)
        md = self._dev(m)
        z = cc = None
        for a in range(0, c, SUB_BLOCK):
            x = self._as64(block[:, a : a + SUB_BLOCK], _cut(refs, a), _cut1(append, a))
            xm = x.T @ md  # (sub, L)
            zb = x @ xm
            z = zb if z is None else z + zb
            if rayleigh:
                cb = xm.T @ xm
                cc = cb if cc is None else cc + cb
        if z is None:
            return np.zeros((n, m.shape[1])), (np.zeros((m.shape[1],) * 2) if rayleigh else None)
        return self._host(z), (self._host(cc) if rayleigh else None)


def _cut(refs, a):
    if not refs:
        return None
    return [(rows, ref[a : a + SUB_BLOCK]) for rows, ref in refs]


def _cut1(row, a):
    return None if row is None else row[a : a + SUB_BLOCK]
