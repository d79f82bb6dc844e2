"""Benchmark: a whole model's layer-wise bases, end to end, tinysub beside Apache Spark.

    python benchmarks/model.py --quick --out FILE.json   # 12 x 7,087,872, t = 32: ~10.9 GB
    python benchmarks/model.py --tiny --out FILE.json    # 2 x 100,000, t = 32 (seconds)
    python benchmarks/model.py --layers 2 --D 1000000 --systems tinysub-local spark

The data: a BERT-base-shaped trajectory store (--layers groups of --D values, t rows: theta0
plus t - 1 random-walk steps, benchmarks/scaling.py's `ensure_store`, chunked by 2^18
columns), generated once on disk under --cache-dir and reused. Every system computes all t
right singular vectors V (D x t) of every layer's W (t x D, mode raw):

- `tinysub-local|dask|ray`: worker.svd.bases.task_basis(store, out, t, mode="raw") on that
  executor, --workers wide (default: the CPUs): the local thread pool, a Dask cluster
  (`dask scheduler` + --workers `dask worker` of one thread) or a Ray head (--workers CPUs),
  both started by this script as real clusters on loopback. The result is one committed basis
  store of --layers layers (float32 V, sha256 per layer in its manifest).
- `spark`: pyspark's RowMatrix.computeSVD(k=t, computeU=True) on local[--workers], one layer
  after another, as a user would write it: Spark tasks read one 2^18-column block of the
  Zarr store each (TrajectoryStore.read_block inside mapPartitions) and emit the D rows of
  W^T as DenseVectors; the JVM-side row RDD is persisted (MEMORY_AND_DISK) so that the
  Gramian and U = A V S^-1 passes do not read the store again; U (D x t, which is V up to sign)
  is collected to the driver as numpy blocks and saved as a float32 .npy per layer (tinysub
  writes its bases too). load_seconds (read + convert + persist, forced by a count),
  svd_seconds (the Gramian and its eigendecomposition), collect_seconds (U's pass and the
  transfer) and save_seconds add up to its seconds. The Spark session (JVM start) is made
  before the clock starts, as the clusters are: startup_seconds, reported apart.

Timing. Each (system, cache) pair runs in a fresh driver process: first_call_seconds is its
first call (for Dask and Ray, their workers' first task imports torch and tinysub: that is
what a first call costs), best_seconds the best of --repeat calls in that process (the first
included). seconds = best_seconds; gb_per_s = bytes of W (layers x t x D x 4) / seconds / 1e9;
s_per_gb its inverse.

Cache. `cold`: before every call, every file under the store is fsync'ed and dropped from the
page cache with posix_fadvise(POSIX_FADV_DONTNEED), which needs no root (clean pages of a file
are dropped for everyone; pages another process has mapped stay). `warm`: before every call
every file is read once. resident_fraction is the share of the store's pages in the page cache
just before each call, measured with mincore(2) on a mapping of each file (so the eviction is
checked, not assumed); cold rows should show ~0, warm ~1 (less if the store does not fit).

Memory. peak_rss_mb: the largest sum of RSS over the driver's process tree (for Spark: the
Python driver, its JVM and the Python workers) plus, for Dask and Ray, the cluster's process
trees, sampled every 50 ms by a thread during each call; the largest over the calls. RSS sums
count shared pages (Ray's object store, forked workers) once per process: an upper bound.

Accuracy: max_angle_rad, the largest angle between a returned vector and the float64
reference (sign-free; benchmarks/basis.py's `evaluate`, its streaming Householder QR of W^T per
layer, computed once and cached), over all layers; orth_err, max|V^T V - I|. Bases with the
same bytes are evaluated once. identical_across_executors: every tinysub row's layers have the
same sha256 (the manifests' hashes of V's float32 bytes).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import hashlib
import json
import mmap
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from benchmarks.basis import GEN_COLS, evaluate  # noqa: E402
from benchmarks.scaling import CHUNK, ensure_store  # noqa: E402

SYSTEMS = ["tinysub-local", "tinysub-dask", "tinysub-ray", "spark"]
CACHES = ["cold", "warm"]
QUICK = {"layers": 12, "D": 7_087_872, "t": 32}  # BERT-base's encoder layers, t = 32
TINY = {"layers": 2, "D": 100_000, "t": 32}
MB = 1 << 20
SAMPLE_S = 0.05


# ----------------------------------------------------------------------------- the data
def _store_path(cache: Path, layers: int, d: int, t: int, seed: int) -> Path:
    return cache / f"store-L{layers}-D{d}-t{t}-seed{seed}"


def _ref_path(store: Path) -> Path:
    return store.with_name(store.name.replace("store-", "ref-") + ".npz")


class StoreColumns:
    """A layer of the store as `w[:, a:b]` column blocks (what basis.evaluate reads)."""

    def __init__(self, store: Any, group: str) -> None:
        self.store, self.group = store, group
        self.rows = list(range(store.num_rows))
        self.shape = (store.num_rows, store.layout.group(group).size)

    def __getitem__(self, key: tuple[slice, slice]) -> np.ndarray:
        cols = key[1]
        stop = min(cols.stop, self.shape[1])
        return self.store.read_block(self.group, cols.start, stop, rows=self.rows)


def write_reference(store_url: str, path: Path) -> None:
    """U (t x t) and S per layer by a float64 streaming QR of W^T (as benchmarks/basis.py)."""
    from storage.trajectory import TrajectoryStore

    store = TrajectoryStore.open(store_url)
    us, ss = [], []
    for group in store.layout.group_names:
        w = StoreColumns(store, group)
        t, d = w.shape
        r = np.zeros((0, t))
        for c in range(0, d, GEN_COLS):
            block = np.asarray(w[:, c : c + GEN_COLS], dtype=np.float64).T
            r = np.linalg.qr(np.vstack([r, block]), mode="r")
        _, s, vr_t = np.linalg.svd(r)
        us.append(vr_t.T)
        ss.append(s)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, u=np.stack(us), s=np.stack(ss), groups=np.array(store.layout.group_names))
    os.replace(tmp, path)


def prepare(cache: Path, layers: int, d: int, t: int, seed: int) -> tuple[str, Path]:
    cache.mkdir(parents=True, exist_ok=True)
    store = _store_path(cache, layers, d, t, seed)
    ensure_store(str(store), {f"l{i}": d for i in range(layers)}, t, seed)
    ref = _ref_path(store)
    if not ref.exists():
        write_reference(str(store), ref)
    return str(store), ref


# ------------------------------------------------------------------------ the page cache
def _files(root: str) -> list[str]:
    return [os.path.join(d, f) for d, _, names in os.walk(root) for f in names]


def evict(root: str) -> None:
    """Drop every file under root from the page cache (no root needed: see the docstring)."""
    for path in _files(root):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def warm(root: str) -> None:
    for path in _files(root):
        with open(path, "rb", buffering=0) as f:
            while f.read(16 * MB):
                pass


_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]  # fmt: skip
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]


def resident_fraction(root: str) -> float | None:
    """The share of the pages of the files under root that are in the page cache (mincore)."""
    page = mmap.PAGESIZE
    resident = total = 0
    for path in _files(root):
        size = os.path.getsize(path)
        if size == 0:
            continue
        pages = (size + page - 1) // page
        fd = os.open(path, os.O_RDONLY)
        try:
            addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
            if addr in (None, ctypes.c_void_p(-1).value):
                return None
            try:
                vec = (ctypes.c_ubyte * pages)()
                if _libc.mincore(addr, size, vec) != 0:
                    return None
                resident += sum(b & 1 for b in vec)
            finally:
                _libc.munmap(addr, size)
        finally:
            os.close(fd)
        total += pages
    return resident / total if total else None


# ---------------------------------------------------------------------------- memory
class TreeRss:
    """Peak of the summed RSS of process trees, sampled by a thread (see the docstring)."""

    def __init__(self, roots: list[int]) -> None:
        import psutil

        self.procs = [psutil.Process(pid) for pid in roots]
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> int:
        import psutil

        seen, total = set(), 0
        for root in self.procs:
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
            for p in tree:
                if p.pid in seen:
                    continue
                seen.add(p.pid)
                with contextlib.suppress(psutil.Error):
                    total += p.memory_info().rss
        return total

    def _loop(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self.peak = max(self.peak, self.sample())

    def __enter__(self) -> TreeRss:
        self.peak = self.sample()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        self.peak = max(self.peak, self.sample())


# ---------------------------------------------------------------------------- tinysub
def _tinysub(case: dict):
    import worker.svd.bases  # noqa: F401 - torch and the kernels load before the clock
    from storage.basis import BasisStore
    from worker.executors import make_executor
    from worker.svd.bases import task_basis

    executor = make_executor(case["executor"], case.get("address"), case["workers"])
    t, out = case["t"], case["out"]

    def run() -> dict:
        report = task_basis(case["store"], out, t, mode="raw", selection=list(range(t)),
                            executor=executor, block_cols=CHUNK, overwrite=True)  # fmt: skip
        return {"url": report.bases[0].url}

    def result(done: dict) -> tuple[list[str], Any]:
        basis = BasisStore.open(done["url"])
        names = basis.layer_names
        return [basis.layers[n].sha256 for n in names], (lambda i: basis.load(names[i]))

    return run, result, executor.close


# ------------------------------------------------------------------------------ spark
def _read_rows(store_url: str, group: str, t: int):
    """A mapPartitions function: (start, stop) column blocks -> rows of W^T as DenseVectors."""

    def read(ranges):
        from pyspark.mllib.linalg import DenseVector

        from storage.trajectory import TrajectoryStore

        store = TrajectoryStore.open(store_url)
        for a, b in ranges:
            block = store.read_block(group, a, b, rows=list(range(t)))
            for row in np.asarray(block.T, dtype=np.float64):
                yield DenseVector(row)

    return read


def _to_blocks(rows):
    block = np.array([r.toArray() for r in rows], dtype=np.float64)
    return [block] if len(block) else []


def _spark(case: dict):
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    path = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), path) if p)
    from pyspark import StorageLevel
    from pyspark.mllib.common import _to_java_object_rdd, callMLlibFunc
    from pyspark.mllib.linalg.distributed import RowMatrix
    from pyspark.sql import SparkSession

    from storage.trajectory import TrajectoryStore

    local = Path(case["out"]) / "spark-local"
    spark = (
        SparkSession.builder.master(f"local[{case['workers']}]")
        .appName("tinysub-model-bench")
        .config("spark.driver.memory", case["spark_memory"])
        .config("spark.local.dir", str(local))
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .getOrCreate()
    )
    sc = spark.sparkContext
    sc.setLogLevel("ERROR")
    level = sc._getJavaStorageLevel(StorageLevel.MEMORY_AND_DISK)
    store = TrajectoryStore.open(case["store"])
    groups, t, out = store.layout.group_names, case["t"], Path(case["out"])
    out.mkdir(parents=True, exist_ok=True)

    def run() -> dict:
        split = {"load_seconds": 0.0, "svd_seconds": 0.0, "collect_seconds": 0.0,
                 "save_seconds": 0.0}  # fmt: skip
        for group in groups:
            ranges = store.column_ranges(group, CHUNK)
            d = store.layout.group(group).size
            start = time.perf_counter()
            rows = sc.parallelize(ranges, len(ranges)).mapPartitions(
                _read_rows(case["store"], group, t)
            )
            jrows = _to_java_object_rdd(rows).persist(level)  # the JVM's RDD[Vector], kept
            jrows.count()
            split["load_seconds"] += time.perf_counter() - start
            start = time.perf_counter()
            matrix = RowMatrix(callMLlibFunc("createRowMatrix", jrows, d, t))
            svd = matrix.computeSVD(t, computeU=True)
            split["svd_seconds"] += time.perf_counter() - start
            start = time.perf_counter()
            u = np.concatenate(svd.U.rows.mapPartitions(_to_blocks).collect())
            split["collect_seconds"] += time.perf_counter() - start
            start = time.perf_counter()
            np.save(out / f"{group}.npy", u.astype(np.float32))
            split["save_seconds"] += time.perf_counter() - start
            jrows.unpersist()
            del u
        return split

    def result(_done: dict) -> tuple[list[str], Any]:
        sums = []
        for group in groups:
            v = np.load(out / f"{group}.npy", mmap_mode="r")
            sums.append(hashlib.sha256(np.ascontiguousarray(v, dtype="<f4").data).hexdigest())
        return sums, (lambda i: np.load(out / f"{groups[i]}.npy", mmap_mode="r"))

    return run, result, spark.stop


# ------------------------------------------------------------------------- one process
def child(case: dict) -> dict:
    """One system, one cache mode, in this fresh process: first call and best of repeat."""
    started = time.perf_counter()
    make = _spark if case["system"] == "spark" else _tinysub
    run, result, close = make(case)
    startup = time.perf_counter() - started
    memory = TreeRss([os.getpid(), *case.get("cluster_pids", [])])
    runs = []
    try:
        for _ in range(case["repeat"]):
            (evict if case["cache"] == "cold" else warm)(case["store"])
            resident = resident_fraction(case["store"])
            with memory:
                start = time.perf_counter()
                done = run()
                seconds = time.perf_counter() - start
            runs.append({"seconds": seconds, "resident_fraction": resident, "peak": memory.peak,
                         **{k: v for k, v in done.items() if k.endswith("_seconds")}})  # fmt: skip
        sums, load = result(done)
    finally:
        close()
    best = min(runs, key=lambda r: r["seconds"])
    row = {
        "first_call_seconds": runs[0]["seconds"],
        "best_seconds": best["seconds"],
        "all_seconds": [r["seconds"] for r in runs],
        "startup_seconds": startup,
        "peak_rss_mb": round(max(r["peak"] for r in runs) / MB, 1),
        "resident_fraction": [r["resident_fraction"] for r in runs],
        "layer_sha256": sums,
        **{k: v for k, v in best.items() if k.endswith("_seconds") and k != "seconds"},
    }
    digest = hashlib.sha256("".join(sums).encode()).hexdigest()
    row["sha256"] = digest
    known = case.get("known", {}).get(digest)
    if known is None:
        from storage.trajectory import TrajectoryStore

        store = TrajectoryStore.open(case["store"])
        ref = np.load(case["ref"])
        angle = orth = 0.0
        for i, group in enumerate(store.layout.group_names):
            v = load(i)
            a, o = evaluate(v, StoreColumns(store, group), ref["u"][i], ref["s"][i])
            angle, orth = max(angle, a), max(orth, o)
            del v
        known = [angle, orth]
    row["max_angle_rad"], row["orth_err"] = known
    return row


# ------------------------------------------------------------------------------ driver
def _run_child(case: dict, timeout: float | None) -> dict:
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child",
                           json.dumps(case)], capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        sys.stderr.write(done.stderr[-4000:])
        return {"error": f"exit status {done.returncode}"}


def table(rows: list[dict]) -> str:
    def f(x, spec):
        return "-" if x is None else format(x, spec)

    lines = [
        "| system | executor | cache | layers | t | D | seconds (best) | first call | s / GB "
        "| GB/s | peak RSS (MB) | max angle (rad) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['system']} | {r['executor']} | {r['cache']} | {r['layers']} | {r['t']} "
            f"| {r['D']:,} | {f(r.get('seconds'), '.2f')} "
            f"| {f(r.get('first_call_seconds'), '.2f')} "
            f"| {f(r.get('s_per_gb'), '.3g')} | {f(r.get('gb_per_s'), '.3g')} "
            f"| {f(r.get('peak_rss_mb'), '.0f')} | {f(r.get('max_angle_rad'), '.1e')} |"
        )
    return "\n".join(lines)


def _machine() -> dict:
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "mem_gb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9,
        "java": shutil.which("java"),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help=f"the issue's size: {QUICK}")
    size.add_argument("--tiny", action="store_true", help=f"a smoke run: {TINY}")
    ap.add_argument("--layers", type=int, help="layer groups; overrides the preset")
    ap.add_argument("--D", type=int, help="values per layer; overrides the preset")
    ap.add_argument("--t", type=int, help="rows (checkpoints); overrides the preset")
    ap.add_argument("--systems", nargs="+", default=SYSTEMS, choices=SYSTEMS)
    ap.add_argument("--repeat", type=int, help="calls per process, the best kept "
                    "(default 3 with --quick, else 1)")  # fmt: skip
    cache = ap.add_mutually_exclusive_group()
    cache.add_argument("--cold", action="store_true", help="only cold-cache rows")
    cache.add_argument("--warm", action="store_true", help="only warm-cache rows")
    ap.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="threads, Dask workers, Ray CPUs, Spark cores (default: the CPUs)",
    )
    ap.add_argument("--spark-memory", default="4g", help="spark.driver.memory (default 4g)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", type=Path,
                    default=Path(tempfile.gettempdir()) / "tinysub-model-bench")  # fmt: skip
    ap.add_argument("--timeout", type=float, help="seconds per process before giving up")
    ap.add_argument("--out", type=Path, help="write the rows (and the machine) as JSON here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    preset = QUICK if args.quick else TINY if args.tiny else {}
    shape = {k: getattr(args, k) or preset.get(k) for k in ("layers", "D", "t")}
    if None in shape.values():
        ap.error("give --quick, --tiny, or all of --layers, --D and --t")
    layers, d, t = shape["layers"], shape["D"], shape["t"]
    repeat = args.repeat or (3 if args.quick else 1)
    caches = ["cold"] if args.cold else ["warm"] if args.warm else CACHES

    started = time.time()
    store, ref = prepare(args.cache_dir, layers, d, t, args.seed)
    gb = 4 * layers * t * d / 1e9
    print(f"# {layers} x {d:,}, t = {t} ({gb:.2f} GB): data ready "
          f"({time.time() - started:.0f} s)", flush=True)  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="model-", dir=args.cache_dir))
    services, clusters = [], {}
    rows: list[dict] = []
    try:
        from tests.topology import DaskCluster, RayHead

        env: dict[str, str] = {}
        if "tinysub-dask" in args.systems:
            clusters["dask"] = DaskCluster(work / "dask", n_workers=args.workers)
        if "tinysub-ray" in args.systems:
            clusters["ray"] = RayHead(work / "ray", num_cpus=args.workers)
            env.update(clusters["ray"].env)  # the drivers need the Ray token
        for cluster in clusters.values():
            services.append(cluster)
            cluster.start()
        os.environ.update(env)
        known: dict[str, list[float]] = {}
        for mode in caches:
            for system in args.systems:
                executor = system.split("-", 1)[1] if system != "spark" else "spark"
                case = {"system": system, "executor": executor, "cache": mode, "store": store,
                        "ref": str(ref), "t": t, "repeat": repeat, "workers": args.workers,
                        "out": str(work / system), "spark_memory": args.spark_memory,
                        "known": known}  # fmt: skip
                if executor in clusters:
                    case["address"] = clusters[executor].address
                    case["cluster_pids"] = [p.proc.pid for p in clusters[executor].procs]
                load = os.getloadavg()
                result = _run_child(case, args.timeout)
                shutil.rmtree(work / system, ignore_errors=True)
                row = {
                    "system": "spark" if system == "spark" else "tinysub",
                    "executor": f"local[{args.workers}]" if system == "spark" else executor,
                    "layers": layers, "t": t, "D": d, "cache": mode, "repeat": repeat,
                    "seconds": result.get("best_seconds"),
                }  # fmt: skip
                row.update(result)
                if row["seconds"]:
                    row["gb_per_s"] = gb / row["seconds"]
                    row["s_per_gb"] = row["seconds"] / gb
                if result.get("max_angle_rad") is not None:
                    known[result["sha256"]] = [result["max_angle_rad"], result["orth_err"]]
                row["load_before"], row["load_after"] = load, os.getloadavg()
                rows.append(row)
                print(f"  {system:<13} {mode:<4} {json.dumps(row)}", flush=True)
    finally:
        for svc in reversed(services):
            svc.stop()
        shutil.rmtree(work, ignore_errors=True)
    sums = {tuple(r["layer_sha256"]) for r in rows if r["system"] == "tinysub" and "error" not in r}
    identical = len(sums) == 1 if sum(r["system"] == "tinysub" for r in rows) > 1 else None
    doc = {
        "machine": _machine(),
        "shape": {"layers": layers, "D": d, "t": t, "gb": gb, "block_cols": CHUNK},
        "repeat": repeat,
        "identical_across_executors": identical,
        "wall_seconds": time.time() - started,
        "rows": rows,
    }
    print()
    print(table(rows))
    print(f"\nidentical_across_executors: {identical}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
