"""Scaling study: how the exact Gram route's time and memory grow, per executor and storage.

    python benchmarks/scaling.py --out benchmarks/results/scaling.json            # full study
    python benchmarks/scaling.py --tiny --out /tmp/scaling.json                   # smoke run
    python benchmarks/scaling_report.py benchmarks/results/scaling.json --docs docs  # plots

Studies (one layer of D = 1,774,464 values and rank k = 8 unless said; mode delta):
- t:         t = 16, 32, 64, 128 checkpoints (selection first:t of one 129-row store);
- D:         D = 1,774,464, 7,087,872, 28,351,488 per layer at t = 32 (the largest last);
- layers:    L = 1, 2, 4, 8 layers of 1,774,464 at t = 32 (one 8-layer store, groups=...);
- tasks:     unified + one zero-shot basis per task for n = 2, 4, 8 tasks (last:8 of each:
             8n rows in one Gram, n + 1 bases written in one projection pass);
- executors: local (2 threads), Dask (`dask scheduler` + 2 `dask worker`, 1 thread each) and
             Ray (`ray start --head`, 2 CPUs) at t = 32, from local disk and from S3 (moto's
             server on loopback, the store uploaded there), bases written next to the input.

Each case runs in a fresh driver process (best of --repeat). seconds: compute_bases' wall time
(executor already connected, stores open); phases: its gram / eigh / project / hash split.
Memory: peak_driver_mb is the driver's peak RSS growth over its baseline (reset with
/proc/self/clear_refs once the stores are open); peak_workers_mb is the sum over the cluster's
processes of (peak RSS - RSS before the case), each process' peak reset before the case: an
upper bound of their simultaneous peak. load: os.getloadavg() before and after each run (the
machine is shared; timings under load are slower, memory is not affected).

Stores are cached under --cache-dir (default <tmp>/tinysub-scaling) and reused; the page cache
is warm, so "local disk" reads come mostly from memory.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

D1, D2, D3 = 1_774_464, 7_087_872, 28_351_488  # 6.8, 27 and 108 x 2^18 columns
CHUNK = 1 << 18  # columns per chunk and per block: 1 MiB of float32 per row chunk
RANK = 8
MB = 1 << 20

FULL = {
    "t": [16, 32, 64, 128],
    "D": [D1, D2, D3],
    "layers": [1, 2, 4, 8],
    "tasks": [2, 4, 8],
    "executors": ["local", "dask", "ray"],
    "t_fixed": 32,
    "D_fixed": D1,
}
TINY = {
    "t": [8, 16],
    "D": [CHUNK, 2 * CHUNK],
    "layers": [1, 2],
    "tasks": [2, 3],
    "executors": ["local", "dask", "ray"],
    "t_fixed": 16,
    "D_fixed": CHUNK,
}


# ---------------------------------------------------------------------------- the stores
def ensure_store(url: str, layers: dict[str, int], rows: int, seed: int, opts=None) -> str:
    """A trajectory store of `rows` rows (theta0 + rows - 1 random-walk steps) per layer."""
    from storage.layout import build_layout
    from storage.trajectory import TrajectoryStore

    if TrajectoryStore.exists(url, opts):
        store = TrajectoryStore.open(url, storage_options=opts)
        if store.num_rows == rows:
            return url
    layout = build_layout([(f"layers.{i}.w", (d,)) for i, d in enumerate(layers.values())])
    store = TrajectoryStore.create(
        url, layout, model_name="scaling", chunk_cols=CHUNK, storage_options=opts, overwrite=True
    )
    rng = np.random.default_rng(seed)
    theta = {g.name: rng.standard_normal(g.size, dtype=np.float32) for g in layout.groups}
    for i in range(rows):
        if i:
            for v in theta.values():
                v += 0.01 * rng.standard_normal(v.size, dtype=np.float32)
        store.append(theta)
    return url


# --------------------------------------------------------------------------- the driver
def _status_kb(field: str, pid: str = "self") -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak(pid: str = "self") -> None:
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")  # VmHWM := VmRSS (Linux >= 4.0)
    except OSError:
        pass


def _compute(case: dict, kw: dict, out: str):
    from worker.svd.bases import multitask_bases, task_basis

    if case["kind"] == "task":
        return task_basis(case["stores"][0], out, RANK, selection=case["selection"], **kw)
    stores = {f"t{i}": url for i, url in enumerate(case["stores"])}
    return multitask_bases(stores, out, RANK, selection=case["selection"], **kw)


def child(case: dict) -> dict:
    """Run one case in this process; returns seconds, phases and the driver's peak growth."""
    import worker.svd.bases  # noqa: F401 - torch and the kernels load before the clock starts
    from worker.executors import make_executor

    opts = case.get("storage_options") or None
    out = case["out"]
    executor = make_executor(case["executor"], case.get("address"), case.get("workers"))
    try:
        kw = dict(executor=executor, block_cols=CHUNK, storage_options=opts, overwrite=True)
        if case.get("groups"):
            kw["groups"] = case["groups"]
        if case.get("warm"):  # the same computation once, untimed (see "warm" above)
            _compute(case, kw, out)
        base_kb = _status_kb("VmRSS")
        _reset_peak()
        start = time.perf_counter()
        report = _compute(case, kw, out)
        seconds = time.perf_counter() - start
        peak_kb = _status_kb("VmHWM")
    finally:
        executor.close()
    return {
        "seconds": seconds,
        "phases": report.seconds,
        "rows": report.rows,
        "bytes_read": report.bytes_read,
        "bases": len(report.bases),
        "peak_driver_mb": None if peak_kb is None else (peak_kb - base_kb) / 1024,
    }


# --------------------------------------------------------------------------- the parent
class ClusterMemory:
    """Peak RSS growth summed over a cluster's process trees (see the module docstring)."""

    def __init__(self, roots: list[int]) -> None:
        self.roots = roots

    def _pids(self) -> list[int]:
        import psutil

        pids = []
        for root in self.roots:
            try:
                p = psutil.Process(root)
                pids += [p.pid] + [c.pid for c in p.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
        return pids

    def start(self) -> None:
        self.base = {pid: _status_kb("VmRSS", str(pid)) or 0 for pid in self._pids()}
        for pid in self.base:
            _reset_peak(str(pid))

    def growth_mb(self) -> float:
        total = 0
        for pid in self._pids():
            hwm = _status_kb("VmHWM", str(pid)) or 0
            total += max(0, hwm - self.base.get(pid, 0))
        return total / 1024


def run_case(case: dict, repeat: int, memory: ClusterMemory | None, warmup: bool = False) -> dict:
    """Best of `repeat` runs (plus one discarded first run with warmup: a cluster's workers
    import torch and tinysub on their first task, ~300 MB and seconds each)."""
    runs = []
    for _ in range(repeat + int(warmup)):
        load_before = os.getloadavg()
        if memory:
            memory.start()
        done = subprocess.run(
            [sys.executable, __file__, "--child", json.dumps(case)],
            capture_output=True,
            text=True,
            timeout=1800,
        )
        if done.returncode != 0:
            raise RuntimeError(f"case {case['label']} failed:\n{done.stderr[-4000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        result["peak_workers_mb"] = memory.growth_mb() if memory else None
        result["load_before"], result["load_after"] = load_before, os.getloadavg()
        runs.append(result)
        _remove(case["out"], case.get("storage_options"))
    runs = runs[int(warmup) :]
    best = min(runs, key=lambda r: r["seconds"])
    summary = {k: v for k, v in case.items() if k not in ("storage_options", "out")}
    print(
        f"{case['study']:9s} {case['label']:28s} {best['seconds']:8.2f}s "
        f"driver +{best['peak_driver_mb']:.0f} MB workers +{best['peak_workers_mb'] or 0:.0f} MB "
        f"load {best['load_before'][0]:.1f}",
        flush=True,
    )
    return {**summary, **best, "repeats": [r["seconds"] for r in runs]}


def _remove(url: str, opts) -> None:
    from storage.objects import Location

    Location.from_url(url, opts).delete(recursive=True)


def merge(old: dict, results: list[dict]) -> list[dict]:
    """Earlier cases plus new ones; a case measured again keeps its fastest run (all of its
    repeats are listed, old first)."""
    cases = {(c["study"], c["label"]): c for c in old["cases"]}
    for c in results:
        key = (c["study"], c["label"])
        if key in cases:
            before = cases[key]
            best = c if c["seconds"] < before["seconds"] else before
            c = {**best, "repeats": before["repeats"] + c["repeats"]}
        cases[key] = c
    return list(cases.values())


def plan(sizes: dict, cache: Path, s3=None) -> list[dict]:
    """The cases, smallest first within each study and the biggest data last overall."""
    t_max, tf, df = max(sizes["t"]), sizes["t_fixed"], sizes["D_fixed"]
    disk = lambda name: str(cache / name)  # noqa: E731
    out = str(cache / "out")
    cases = []

    def case(study, label, stores, selection, kind="task", **kw):
        cases.append({"study": study, "label": label, "stores": stores, "selection": selection,
                      "kind": kind, "executor": "local", "workers": 2, "out": out,
                      "storage": "disk", **kw})  # fmt: skip

    long = ensure_store(disk(f"t{t_max}-D{df}"), {"w": df}, t_max + 1, 1)
    for t in sizes["t"]:
        case("t", f"t={t} D={df:,}", [long], f"first:{t}", t=t, D=df, layers=1)
    deep = ensure_store(disk(f"L{max(sizes['layers'])}-D{df}"),
                        {f"l{i}": df for i in range(max(sizes["layers"]))}, tf + 1, 2)  # fmt: skip
    for n in sizes["layers"]:
        groups = [f"layer.{i}" for i in range(n)]
        case("layers", f"L={n} t={tf}", [deep], f"first:{tf}", t=tf, D=df, layers=n,
             groups=groups)  # fmt: skip
    per_task = tf // 4
    tasks = [ensure_store(disk(f"task{i}-D{df}"), {"w": df}, per_task + 1, 10 + i)
             for i in range(max(sizes["tasks"]))]  # fmt: skip
    for n in sizes["tasks"]:
        case("tasks", f"n={n} x last:{per_task}", tasks[:n], f"last:{per_task}", kind="multi",
             t=n * per_task, D=df, layers=1, tasks=n)  # fmt: skip
    url = None
    if s3 is not None:
        url = ensure_store(f"s3://{s3.bucket}/t{tf}-D{df}", {"w": df}, tf + 1, 1,
                           s3.storage_options)  # fmt: skip
    for study, warm in (("executors", False), ("warm", True)):
        for ex in sizes["executors"]:
            case(study, f"{ex} disk", [long], f"first:{tf}", executor=ex, t=tf, D=df, layers=1,
                 warm=warm)  # fmt: skip
        for ex in sizes["executors"] if url else ():
            case(study, f"{ex} s3", [url], f"first:{tf}", executor=ex, storage="s3", t=tf,
                 D=df, layers=1, storage_options=s3.storage_options, warm=warm,
                 out=f"s3://{s3.bucket}/out")  # fmt: skip
    for d in sizes["D"]:
        store = long if d == df else ensure_store(disk(f"t{tf}-D{d}"), {"w": d}, tf + 1, 3)
        case("D", f"D={d:,} t={tf}", [store], f"first:{tf}", t=tf, D=d, layers=1)
    return cases


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/scaling.json")
    ap.add_argument("--tiny", action="store_true", help="Small sizes (a smoke run).")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--studies", default="t,layers,tasks,executors,warm,D")
    ap.add_argument("--merge", action="store_true", help="Add to (replace in) an existing --out.")
    ap.add_argument("--no-s3", action="store_true", help="Skip the S3 (moto) cases.")
    ap.add_argument(
        "--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "tinysub-scaling"
    )
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0

    from tests.topology import DaskCluster, LocalS3, RayHead

    sizes = TINY if args.tiny else FULL
    cache = args.cache_dir / ("tiny" if args.tiny else "full")
    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="tinysub-scaling-"))
    studies = set(args.studies.split(","))
    started, results = time.time(), []
    services = []
    try:
        s3 = None
        if studies & {"executors", "warm"} and not args.no_s3:
            s3 = LocalS3(work / "s3", bucket="scaling")
            services.append(s3)
            s3.start()
        cases = [c for c in plan(sizes, cache, s3) if c["study"] in studies]
        clusters = {}
        if any(c["executor"] != "local" for c in cases):
            env = s3.env if s3 else None
            dask = DaskCluster(work / "dask", n_workers=2, env=env)
            ray = RayHead(work / "ray", num_cpus=2, env=env)
            services += [dask, ray]
            dask.start()
            ray.start()
            os.environ.update(ray.env)  # the drivers inherit the Ray token
            clusters = {"dask": dask, "ray": ray}
        print(f"stores ready after {time.time() - started:.0f}s", flush=True)
        warm = set()
        for c in cases:
            cluster = clusters.get(c["executor"])
            memory = None
            if cluster is not None:
                c["address"] = cluster.address
                memory = ClusterMemory([p.proc.pid for p in cluster.procs])
            first = cluster is not None and c["executor"] not in warm
            warm.add(c["executor"])
            results.append(run_case(c, args.repeat, memory, warmup=first))
    finally:
        for svc in reversed(services):
            svc.stop()
        shutil.rmtree(work, ignore_errors=True)
    doc = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "mem_gb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9,
        },
        "sizes": sizes,
        "rank": RANK,
        "block_cols": CHUNK,
        "wall_seconds": time.time() - started,
        "cases": results,
    }
    if args.merge and args.out.exists():
        doc["cases"] = merge(json.loads(args.out.read_text()), results)
        doc["wall_seconds"] += json.loads(args.out.read_text()).get("wall_seconds", 0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1))
    print(f"wrote {args.out} ({len(results)} cases, {doc['wall_seconds']:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
