"""Registry benchmark: pulling a basis layer over loopback, and manifest look-ups.

    python benchmarks/registry.py --quick --out FILE.json

Starts `tinysub serve` on 127.0.0.1 (SQLite and store in a temp dir), uploads a 33-row
trajectory of one 7,087,872-value layer (BERT-base's per-layer size) and orders its task basis,
a (7,087,872 x 32) float32 layer of 907 MB (`--source random`: a random basis, no upload); then
measures:

- cold_pull_throughput (MB/s): `Client.pull_basis` into an empty cache (download, sha256, write);
- server_mem_growth (MB): peak RSS of the server process during that pull minus its RSS before;
- warm_pull_bytes (bytes): response body bytes of a second pull (manifest revalidated, 304);
- manifest_rps (requests/s): manifest look-ups by 8 concurrent client processes.

MB = 10^6 bytes. FILE.json is a list of {metric, value, unit}. `--quick` does one pull of each
kind and a 3 s look-up run (10 s without it); `--rows` shrinks the layer for development.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402

from client import Client  # noqa: E402
from services.local import LocalServer  # noqa: E402
from storage.layout import build_layout  # noqa: E402

MB = 1e6


class CountingTransport(httpx.HTTPTransport):
    """Counts response body bytes as they arrive."""

    def __init__(self) -> None:
        super().__init__()
        self.body_bytes = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        inner = response.stream
        transport = self

        class Counted(httpx.SyncByteStream):
            def __iter__(self):
                for chunk in inner:
                    transport.body_bytes += len(chunk)
                    yield chunk

            def close(self) -> None:
                inner.close()

        response.stream = Counted()
        return response


class PeakRSS(threading.Thread):
    """Samples a process' resident memory every few milliseconds."""

    def __init__(self, pid: int, every: float = 0.005) -> None:
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.every = every
        self.peak = self.proc.memory_info().rss
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.every)


def _lookups(args: tuple[str, str, float]) -> int:
    url, token, seconds = args
    n = 0
    with httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            r = http.get(url)
            r.raise_for_status()
            n += 1
    return n


def manifest_rps(server: LocalServer, token: str, clients: int, seconds: float, kind: str) -> float:
    url = f"{server.url}/v1/tasks/bench/bases/{kind}"
    ctx = mp.get_context("spawn")
    with ctx.Pool(clients) as pool:
        _lookups((url, token, 0.2))  # warm the server's connection pool and caches
        t0 = time.perf_counter()
        counts = pool.map(_lookups, [(url, token, seconds)] * clients)
        elapsed = time.perf_counter() - t0
    return sum(counts) / elapsed


def _trajectory(layout, rows: int):
    """theta0 and rows-1 random-walk checkpoints, one row at a time (float32)."""
    rng = np.random.default_rng(0)
    d = layout.total_size
    theta = rng.standard_normal(d, dtype=np.float32)
    yield {"layer.0": theta}
    for _ in range(rows - 1):
        theta = theta + 0.01 * rng.standard_normal(d, dtype=np.float32)
        yield {"layer.0": theta}


def run(args: argparse.Namespace) -> list[dict]:
    work = Path(args.workdir or tempfile.mkdtemp(prefix="tinysub-bench-"))
    rows: list[dict] = []
    try:
        with LocalServer(work / "registry", {"TINYSUB_JOB_POLL_SECONDS": "0.1"}) as server:
            token = server.admin_token()
            layout = build_layout([("encoder.layer.0.weight", (args.rows,))])
            with Client(server.url, token=token, cache_dir=work / "setup-cache") as c:
                c.create_task("bench", model="bench", layout=layout)
                t0 = time.perf_counter()
                if args.source == "task":
                    c.upload_trajectory("bench", _trajectory(layout, args.rank + 1))
                c.compute_basis("bench", args.source, rank=args.rank).wait(timeout=3600)
                print(f"basis ready in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
                manifest = c.basis("bench", args.source)
                nbytes = manifest["layers"][0]["nbytes"]
                chunk_mb = manifest["layers"][0]["chunk_rows"] * 4 * args.rank / MB
                print(f"layer chunks of {chunk_mb:.0f} MB", file=sys.stderr)

            pulls = 1 if args.quick else 3
            speeds, growth = [], []
            for i in range(pulls):
                cache = work / f"cache-{i}"
                sampler = PeakRSS(server.pid)
                before = sampler.peak
                sampler.start()
                with Client(server.url, token=token, cache_dir=cache) as c:
                    t0 = time.perf_counter()
                    c.pull_basis("bench", args.source)
                    seconds = time.perf_counter() - t0
                sampler.done.set()
                sampler.join()
                speeds.append(nbytes / seconds / MB)
                growth.append((sampler.peak - before) / MB)
                if i + 1 < pulls:
                    shutil.rmtree(cache)
            rows.append(
                {"metric": "cold_pull_throughput", "value": round(max(speeds), 1), "unit": "MB/s"}
            )
            rows.append(
                {"metric": "server_mem_growth", "value": round(max(growth), 1), "unit": "MB"}
            )

            counting = CountingTransport()
            with httpx.Client(transport=counting, timeout=60) as http:
                c = Client(server.url, token=token, cache_dir=cache, http=http)
                c.pull_basis("bench", args.source)
            rows.append(
                {"metric": "warm_pull_bytes", "value": counting.body_bytes, "unit": "bytes"}
            )

            seconds = 3.0 if args.quick else 10.0
            rps = manifest_rps(server, token, args.clients, seconds, args.source)
            rows.append({"metric": "manifest_rps", "value": round(rps, 1), "unit": "requests/s"})
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="One pull each, 3 s of look-ups.")
    p.add_argument("--out", type=Path, required=True, help="Where the JSON rows go.")
    p.add_argument("--rows", type=int, default=7_087_872, help="D of the layer.")
    p.add_argument("--rank", type=int, default=32, help="k of the layer.")
    p.add_argument("--clients", type=int, default=8, help="Concurrent manifest clients.")
    p.add_argument(
        "--source",
        choices=["task", "random"],
        default="task",
        help="task: a kernel-computed basis of an uploaded (k+1)-row trajectory (as served in "
        "practice); random: the seeded random basis (no trajectory, faster to set up).",
    )
    p.add_argument("--workdir", help="Keep the server's data here instead of a temp dir.")
    args = p.parse_args(argv)
    rows = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1) + "\n")
    for row in rows:
        print(f"{row['metric']:>22}: {row['value']} {row['unit']}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TINYSUB_LOG_LEVEL", "warning")
    sys.exit(main())
