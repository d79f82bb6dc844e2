"""GPU figures for the exact Gram route (issue 14, item 6): one layer's basis on a CUDA device.

    python benchmarks/gpu_basis.py --out FILE.json               # t = 32, D = 7,087,872
    python benchmarks/gpu_basis.py --t 32 --D 100000 --repeat 2 --out FILE.json   # smoke run

The same test matrix as benchmarks/basis.py (W = Q diag(s) G / sqrt(D), float32, singular
values from 1 to 1e-4; its float64 reference U, S by a streaming Householder QR), and rows:

- `floor-fp32-resident`: W already on the device; one float32 W W^T plus one W^T M (M t x t),
  what any method that reads W twice must spend. hbm_gb_s: bytes moved through HBM (W read
  twice, V written) per second, against the device's peak (H200: 4.8 TB/s).
- `h2d-copy`: W from (pageable) host memory to the device: the PCIe cost the in-memory route
  pays, since `svd_basis` takes a host array.
- `tinysub-cuda`: worker.svd.gram.svd_basis(W, t, mode="raw", device="cuda"): W from host
  memory, float64 Gram and projection on the device, V back to the host.
- `tinysub-cpu`: the same on the host's CPU threads (device="cpu"), for comparison.

Every row reports the first call (CUDA context, cuBLAS handles and kernels loaded) and the best
of --repeat, wall clock with torch.cuda.synchronize(); accuracy rows give the largest angle to
the float64 reference (radians) and max|V^T V - I|.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo, for worker/
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/basis.py

import basis as bench  # noqa: E402  (benchmarks/basis.py: the matrix and its reference)

H200_PEAK_GB_S = 4800.0


def _timed(fn, repeat: int, sync) -> tuple[float, float, Any]:
    """(first call seconds, best of `repeat` further calls, the last result)."""
    times, out = [], None
    for _ in range(repeat + 1):
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - t0)
    return times[0], min(times[1:]), out


def run(t: int, d: int, repeat: int, cache: Path) -> dict[str, Any]:
    import torch

    from worker.svd.gram import svd_basis

    cache.mkdir(parents=True, exist_ok=True)
    paths = bench._paths(cache, t, d, 0, 1 << 16)
    if not paths["w"].exists():
        bench.write_trajectory(paths["w"], t, d, 0)
    if not paths["ref"].exists():
        bench.write_reference(paths["w"], paths["ref"])
    w = np.ascontiguousarray(np.load(paths["w"]))  # in memory: the in-memory route's input
    ref = np.load(paths["ref"])
    u, s = ref["u"], ref["s"]
    cuda = torch.cuda.is_available()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    info: dict[str, Any] = {
        "t": t,
        "D": d,
        "repeat": repeat,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device_name": torch.cuda.get_device_name(0) if cuda else None,
        "w_bytes": w.nbytes,
    }
    rows = []
    if cuda:
        dev = "cuda"
        first, best, wd = _timed(lambda: torch.from_numpy(w).to(dev), repeat, sync)
        rows.append(
            {"route": "h2d-copy", "first_s": first, "best_s": best, "gb_s": w.nbytes / best / 1e9}
        )
        m = torch.randn(t, t, device=dev, dtype=torch.float32)

        def floor():
            g = wd @ wd.T
            return g, wd.T @ m

        first, best, _ = _timed(floor, repeat, sync)
        moved = 2 * w.nbytes + d * t * 4  # W read twice, V written
        rows.append(
            {
                "route": "floor-fp32-resident",
                "first_s": first,
                "best_s": best,
                "hbm_gb_s": moved / best / 1e9,
                "fraction_of_h200_peak": moved / best / 1e9 / H200_PEAK_GB_S,
            }
        )
        del wd
        torch.cuda.empty_cache()
        first, best, basis = _timed(lambda: svd_basis(w, t, mode="raw", device=dev), repeat, sync)
        angle, orth = bench.evaluate(np.asarray(basis.v), w, u, s)
        rows.append(
            {
                "route": "tinysub-cuda",
                "first_s": first,
                "best_s": best,
                "max_angle_rad": angle,
                "orth_err": orth,
                "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20,
            }
        )
    first, best, basis = _timed(
        lambda: svd_basis(w, t, mode="raw", device="cpu"), max(1, repeat // 2), sync
    )
    angle, orth = bench.evaluate(np.asarray(basis.v), w, u, s)
    rows.append(
        {
            "route": "tinysub-cpu",
            "first_s": first,
            "best_s": best,
            "max_angle_rad": angle,
            "orth_err": orth,
        }
    )
    return {**info, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--t", type=int, default=32)
    p.add_argument("--D", type=int, default=7_087_872)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "tinysub-gpu")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    result = run(a.t, a.D, a.repeat, a.cache_dir)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    for row in result["rows"]:
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
