"""Benchmark: right singular vectors of one layer's trajectory, tinysub against the usual tools.

    python benchmarks/basis.py --quick --out FILE.json   # t = 32, 64; D = 1,774,464, 7,087,872
    python benchmarks/basis.py --tiny --out FILE.json    # a small smoke run (seconds)

Every method decomposes the same float32 matrix W (t x D) whose singular values decay
geometrically from 1 to 1e-4 (W = Q diag(s) G with Q a random rotation and G Gaussian rows;
the rows of a real trajectory in `raw` mode, theta0 plus small steps, have a spectrum like it),
and returns all t right singular vectors:

- `tinysub`: the exact Gram route from memory, worker.svd.gram.svd_basis(W, t, mode="raw");
- `tinysub-store`: the same from a local Zarr trajectory store (task_basis, local executor),
  V written to a Zarr basis store; W is never in memory. The store is chunked by --chunk-cols
  columns (default 65,536: 256 KiB per row chunk) and tasks take blocks that wide. A task holds
  about three blocks (X, V and V's encoded write), so memory grows by about
  3 x t x chunk_cols x 4 bytes x workers (threads, default min(4, CPUs)), whatever D is;
  the page cache is warm (the store was just written);
- `numpy-svd`: numpy.linalg.svd(W, full_matrices=False);
- `torch-svd`: torch.linalg.svd(W, full_matrices=False);
- `dask-svd`: dask.array.linalg.svd of W^T (D x t, chunked by rows: dask's tall-skinny TSQR);
- `sklearn-rsvd`: sklearn.utils.extmath.randomized_svd(W, t, random_state=0);
- `floor`: one float32 W W^T plus one W^T M (M t x t), the best of torch and numpy: what any
  method that reads W twice must at least spend.

Each method runs in a fresh subprocess. seconds: the best of --repeat runs. peak_rss_mb: the
growth of the peak resident set over the process' baseline, taken once its imports are done and
W is loaded (for tinysub-store: once the store is open); peak_rss_abs_mb: the peak itself. On
Linux the peak is reset at the baseline (/proc/self/clear_refs), so loading W does not count.

Accuracy, against a float64 reference computed once per (t, D) and cached: a streaming
Householder QR of W^T in float64 (R only), then the SVD of R gives U and S exactly to float64
rounding; the reference V = W^T U S^-1 is formed in float64 block by block while comparing, so
it is never stored. max_angle_rad: the largest angle between a returned vector and its reference
(sign-free); orth_err: max|V^T V - I|. Both are null for `floor`, which returns no basis.

Cached under --cache-dir (default: <tmp>/tinysub-bench): W as .npy, the reference (U, S) as .npz
and the Zarr store, so a second run reuses them.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

QUICK = {"t": [32, 64], "D": [1_774_464, 7_087_872]}
TINY = {"t": [16, 32], "D": [100_000]}
METHODS = [
    "tinysub",
    "tinysub-store",
    "numpy-svd",
    "torch-svd",
    "dask-svd",
    "sklearn-rsvd",
    "floor",
]
CONDITION = 1e4  # sigma_1 / sigma_t of the test matrix
GEN_COLS = 1 << 18  # columns per block when generating W and comparing (fixed: W is seeded)
MB = 1 << 20


def _repo_on_path() -> None:
    # Run as a script, sys.path[0] is benchmarks/; put the checkout first so this checkout's
    # tinysub is measured even if another one is installed.
    root = str(Path(__file__).resolve().parent.parent)
    if root not in sys.path:
        sys.path.insert(0, root)


# ------------------------------------------------------------------------------ the data
def _paths(cache: Path, t: int, d: int, seed: int, chunk_cols: int) -> dict[str, Path]:
    stem = f"t{t}-D{d}-seed{seed}-cond{CONDITION:g}"
    return {
        "w": cache / f"w-{stem}.npy",
        "ref": cache / f"ref-{stem}.npz",
        "store": cache / f"store-{stem}-c{chunk_cols}",
        "basis": cache / f"basis-{stem}",
    }


def spectrum(t: int) -> np.ndarray:
    return np.logspace(0, -math.log10(CONDITION), t)


def write_trajectory(path: Path, t: int, d: int, seed: int) -> None:
    """W = Q diag(s) G / sqrt(D), float32, written block by block (never all in memory twice)."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((t, t)))
    a = (q * spectrum(t)).astype(np.float32) / np.float32(math.sqrt(d))  # (t, t)
    tmp = path.with_suffix(".tmp.npy")
    w = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(t, d))
    for c in range(0, d, GEN_COLS):
        g = rng.standard_normal((t, min(GEN_COLS, d - c)), dtype=np.float32)
        w[:, c : c + g.shape[1]] = a @ g
    w.flush()
    del w
    os.replace(tmp, path)


def write_reference(w_path: Path, ref_path: Path) -> None:
    """U (t x t) and S of W by a float64 streaming QR of W^T (TSQR) and the SVD of R.

    W^T = Q R and R = Ur S Vr^T give W = Vr S (Q Ur)^T: U = Vr. Householder QR is backward
    stable, so the error is O(eps64 / gap), not the Gram route's O(eps64 * cond^2).
    """
    w = np.load(w_path, mmap_mode="r")
    t, d = w.shape
    r = np.zeros((0, t))
    for c in range(0, d, GEN_COLS):
        block = np.asarray(w[:, c : c + GEN_COLS], dtype=np.float64).T  # (c, t)
        r = np.linalg.qr(np.vstack([r, block]), mode="r")
    _, s, vr_t = np.linalg.svd(r)
    u = vr_t.T
    u = u * np.sign(u[np.argmax(np.abs(u), axis=0), np.arange(t)])
    np.savez(ref_path, u=u, s=s)


def write_store(w_path: Path, store_path: Path, chunk_cols: int) -> None:
    from storage.layout import build_layout
    from storage.trajectory import TrajectoryStore

    w = np.load(w_path, mmap_mode="r")
    t, d = w.shape
    layout = build_layout([("encoder.layer.0.flat", (d,))])
    store = TrajectoryStore.create(
        store_path, layout, model_name="bench", chunk_cols=chunk_cols, overwrite=True
    )
    for i in range(t):
        store.append({"layer.0": np.asarray(w[i])}, step=i)


def prepare(cache: Path, t: int, d: int, seed: int, chunk_cols: int, store: bool) -> None:
    p = _paths(cache, t, d, seed, chunk_cols)
    cache.mkdir(parents=True, exist_ok=True)
    if not p["w"].exists():
        write_trajectory(p["w"], t, d, seed)
    if not p["ref"].exists():
        write_reference(p["w"], p["ref"])
    if store and not (p["store"] / "_rows" / f"{t - 1:08d}.json").exists():
        write_store(p["w"], p["store"], chunk_cols)


# ------------------------------------------------------------------------------- memory
def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_bytes() -> int:
    kb = _status_kb("VmRSS")
    if kb is not None:
        return kb * 1024
    import psutil

    return psutil.Process().memory_info().rss


def reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_bytes() -> int:
    kb = _status_kb("VmHWM")
    if kb is not None:
        return kb * 1024
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


# ------------------------------------------------------------------------------ methods
def _method(
    name: str, w: np.ndarray | None, t: int, paths: dict, workers: int | None, block_cols: int
):
    """A function that runs the method once and returns its V (D, k), a BasisStore for
    tinysub-store, or {library: seconds} for floor. Imports happen here, before the baseline."""
    if name == "tinysub":
        from worker.svd.gram import svd_basis

        return lambda: svd_basis(w, t, mode="raw").v
    if name == "tinysub-store":
        from storage.basis import BasisStore
        from worker.executors import LocalExecutor
        from worker.svd.bases import task_basis

        def run():
            with LocalExecutor(workers) as ex:
                report = task_basis(
                    str(paths["store"]),
                    str(paths["basis"]),
                    t,
                    mode="raw",
                    selection=list(range(t)),
                    executor=ex,
                    block_cols=block_cols,
                    overwrite=True,
                )
            return BasisStore.open(report.bases[0].url)

        return run
    if name == "numpy-svd":
        return lambda: np.linalg.svd(w, full_matrices=False)[2].T
    if name == "torch-svd":
        import torch

        return lambda: torch.linalg.svd(torch.from_numpy(w), full_matrices=False)[2].T.numpy()
    if name == "dask-svd":
        import dask.array as da

        def run():
            a = da.from_array(w.T, chunks=(GEN_COLS, t))  # (D, t), tall-skinny row blocks
            u, _, _ = da.linalg.svd(a)
            return u.compute()

        return run
    if name == "sklearn-rsvd":
        from sklearn.utils.extmath import randomized_svd

        return lambda: randomized_svd(w, t, random_state=0)[2].T
    if name == "floor":
        import torch

        m = np.random.default_rng(0).standard_normal((t, t)).astype(np.float32)
        wt, mt = torch.from_numpy(w), torch.from_numpy(m)

        def run():
            seconds = {}
            for lib, fn in (
                ("torch", lambda: (wt @ wt.T, wt.T @ mt)),
                ("numpy", lambda: (w @ w.T, w.T @ m)),
            ):
                start = time.perf_counter()
                fn()
                seconds[lib] = time.perf_counter() - start
            return seconds

        return run
    raise SystemExit(f"unknown method {name!r}; use {METHODS}")


def evaluate(v: np.ndarray, w: np.ndarray, u: np.ndarray, s: np.ndarray) -> tuple[float, float]:
    """(max angle to the float64 reference, max|V^T V - I|), in float64, block by block.

    Angles from the distance between unit vectors, 2 asin(|a - b| / 2): exact down to 1e-16,
    where 1 - cos would bottom out near 1e-8.
    """
    d, k = v.shape
    vtv = np.zeros((k, k))
    rr, dots = np.zeros(k), np.zeros(k)
    ref = u[:, :k] / s[:k]  # (t, k): V_ref = W^T U S^-1
    for c in range(0, d, GEN_COLS):
        vb = np.asarray(v[c : c + GEN_COLS], dtype=np.float64)
        rb = np.asarray(w[:, c : c + GEN_COLS], dtype=np.float64).T @ ref
        vtv += vb.T @ vb
        rr += np.einsum("ij,ij->j", rb, rb)
        dots += np.einsum("ij,ij->j", vb, rb)
    vn, rn, sign = np.sqrt(np.diag(vtv)), np.sqrt(rr), np.sign(dots)
    dist2 = np.zeros(k)
    for c in range(0, d, GEN_COLS):
        vb = np.asarray(v[c : c + GEN_COLS], dtype=np.float64) / vn
        rb = np.asarray(w[:, c : c + GEN_COLS], dtype=np.float64).T @ ref / rn * sign
        dist2 += np.einsum("ij,ij->j", vb - rb, vb - rb)
    angles = 2 * np.arcsin(np.minimum(np.sqrt(dist2) / 2, 1.0))
    return float(angles.max()), float(np.abs(vtv - np.eye(k)).max())


def _warm_up(method: str, t: int, workers: int | None) -> None:
    """Run the method once on a small matrix: first calls load LAPACK, start BLAS thread pools
    and compile dask graphs, which is not what we measure."""
    small = np.random.default_rng(1).standard_normal((t, 4 * t + 1000)).astype(np.float32)
    if method == "tinysub-store":
        method = "tinysub"  # the same kernels; the store itself has nothing to warm
    _method(method, small, t, {}, workers, 0)()


def run_child(args) -> dict:
    """One method, one size, in this (fresh) process."""
    t, d = args.t[0], args.D[0]
    paths = _paths(Path(args.cache_dir), t, d, args.seed, args.chunk_cols)
    _warm_up(args.run, t, args.workers)
    w = None if args.run == "tinysub-store" else np.load(paths["w"])
    run = _method(args.run, w, t, paths, args.workers, args.chunk_cols)
    gc.collect()
    baseline = rss_bytes()
    reset = reset_peak()
    times, outs = [], []
    for _ in range(args.repeat):
        if args.run != "floor":
            outs = []  # one V alive at a time
        gc.collect()
        start = time.perf_counter()
        outs.append(run())
        times.append(time.perf_counter() - start)
    peak = peak_bytes()
    row = {
        "method": args.run,
        "t": t,
        "D": d,
        "seconds": min(times),
        "peak_rss_mb": round((peak - baseline) / MB, 1) if reset else None,
        "max_angle_rad": None,
        "orth_err": None,
        "peak_rss_abs_mb": round(peak / MB, 1),
        "baseline_rss_mb": round(baseline / MB, 1),
        "trajectory_mb": round(4 * t * d / MB, 1),
    }
    if args.run == "floor":
        # run() timed each library separately; the floor is the faster one.
        by_lib = {lib: min(o[lib] for o in outs) for lib in outs[0]}
        row["seconds"] = min(by_lib.values())
        row["floor_by_lib"] = by_lib
        return row
    out = outs[-1]
    if args.run == "tinysub-store":
        v = out.load("layer.0")
        w = np.load(paths["w"], mmap_mode="r")
    else:
        v = out
    ref = np.load(paths["ref"])
    row["max_angle_rad"], row["orth_err"] = evaluate(v, w, ref["u"], ref["s"])
    return row


# ------------------------------------------------------------------------------- driver
def _child(args, extra: list[str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(Path(__file__).resolve()), *extra]
    cmd += ["--cache-dir", args.cache_dir, "--seed", str(args.seed)]
    cmd += ["--chunk-cols", str(args.chunk_cols), "--repeat", str(args.repeat)]
    if args.workers:
        cmd += ["--workers", str(args.workers)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)


def _measure(args, method: str, t: int, d: int) -> dict:
    failed = {"method": method, "t": t, "D": d, "seconds": None}
    try:
        done = _child(args, ["--run", method, "--t", str(t), "--D", str(d)])
    except subprocess.TimeoutExpired:
        return {**failed, "error": f"timed out after {args.timeout} s"}
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        sys.stderr.write(done.stderr[-3000:])
        return {**failed, "error": f"exit status {done.returncode}"}


def table(rows: list[dict]) -> str:
    floor = {(r["t"], r["D"]): r["seconds"] for r in rows if r["method"] == "floor"}

    def f(x, spec):
        return "-" if x is None else format(x, spec)

    lines = [
        "| method | t | D | seconds | x floor | peak RSS growth (MB) | peak RSS (MB) "
        "| max angle (rad) | max abs(V^T V - I) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        fl = floor.get((r["t"], r["D"]))
        ratio = r["seconds"] / fl if fl and r.get("seconds") is not None else None
        lines.append(
            f"| {r['method']} | {r['t']} | {r['D']:,} | {f(r.get('seconds'), '.3f')} "
            f"| {f(ratio, '.1f')} | {f(r.get('peak_rss_mb'), '.0f')} "
            f"| {f(r.get('peak_rss_abs_mb'), '.0f')} | {f(r.get('max_angle_rad'), '.1e')} "
            f"| {f(r.get('orth_err'), '.1e')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help=f"the issue's sizes: {QUICK}")
    size.add_argument("--tiny", action="store_true", help=f"a smoke run: {TINY}")
    p.add_argument("--t", type=int, nargs="+", help="rows (checkpoints); overrides the preset")
    p.add_argument("--D", type=int, nargs="+", help="columns (layer size); overrides the preset")
    p.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    p.add_argument("--out", help="write the rows as a JSON list here")
    p.add_argument("--table", help="also write the markdown table here")
    p.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "tinysub-bench"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeat", type=int, default=1, help="runs per method; the best is kept")
    p.add_argument(
        "--chunk-cols",
        type=int,
        default=1 << 16,
        help="columns per chunk of the Zarr store and per task block, for tinysub-store",
    )
    p.add_argument("--workers", type=int, help="local executor threads for tinysub-store")
    p.add_argument("--timeout", type=float, help="seconds per method before giving up")
    p.add_argument("--run", help=argparse.SUPPRESS)  # internal: one method in this process
    p.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    preset = QUICK if args.quick else TINY if args.tiny else None
    if preset is None and not (args.t and args.D):
        p.error("give --quick, --tiny, or both --t and --D")
    args.t = args.t or preset["t"]
    args.D = args.D or preset["D"]
    _repo_on_path()

    if args.prepare:
        prepare(Path(args.cache_dir), args.t[0], args.D[0], args.seed, args.chunk_cols, True)
        return 0
    if args.run:
        print(json.dumps(run_child(args)))
        return 0

    rows = []
    for t in args.t:
        for d in args.D:
            sized = ["--t", str(t), "--D", str(d)]
            started = time.perf_counter()
            done = _child(args, ["--prepare", *sized])
            if done.returncode:
                sys.stderr.write(done.stderr)
                raise SystemExit(f"preparing t={t} D={d} failed")
            print(f"# t={t} D={d:,}: data ready ({time.perf_counter() - started:.1f} s)")
            for method in args.methods:
                row = _measure(args, method, t, d)
                rows.append(row)
                print(f"  {method:<13} {json.dumps(row)}", flush=True)
    print()
    print(table(rows))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")
    if args.table:
        Path(args.table).write_text(table(rows) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
