"""Load on a real registry over loopback: pullers, uploaders and manifest look-ups at once.

    python -m tests.reliability.load --seconds 60 --out load.json     (the full run, ~70 s)
    python -m tests.reliability.load --seconds 5 --small              (a smoke run)

Starts `tinysub serve` on a free 127.0.0.1 port (SQLite and store in a temp dir), orders two
random bases (two layers of `--layer-values` x `--rank` float32 each), creates one upload task
per uploader, then for `--seconds` runs at the same time:

- `--pullers` clients (default 16), each looping: GET the manifest, then stream every layer and
  check its size and sha256 against the manifest;
- `--uploaders` clients (default 4), each uploading new rows of its own task in parts
  (PUT raw float32 with X-Tinysub-Sha256, then commit), remembering every row the server
  acknowledged;
- `--lookups` clients (default 4) doing manifest look-ups only.

Clients are threads spread over `--procs` processes (the GIL of one process would otherwise be
the bottleneck). Afterwards every acknowledged row is read back from the registry and compared
by sha256 ("no lost upload"). Reports requests/s, p50/p99 latency (overall and per request
kind), bytes pulled, 5xx and other errors, sha256 failures, lost rows, the server's RSS
(start, peak, end) and the machine's load average. Exit status 1 if any guarantee failed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

MB = 1e6


@dataclass
class Plan:
    url: str
    token: str
    seconds: float
    pull_tasks: list[str]
    upload_tasks: list[str]
    upload_groups: dict[str, int]  # group -> values, of the upload tasks' layout
    part_bytes: int


@dataclass
class Tally:
    """What one client saw: (kind, latency seconds, status) per request, and checks."""

    requests: list[tuple[str, float, int]] = field(default_factory=list)
    transport_errors: int = 0
    sha_failures: int = 0
    bytes_pulled: int = 0
    acknowledged: dict[str, list[dict[str, str]]] = field(default_factory=dict)

    def merge(self, other: Tally) -> None:
        self.requests += other.requests
        self.transport_errors += other.transport_errors
        self.sha_failures += other.sha_failures
        self.bytes_pulled += other.bytes_pulled
        for task, rows in other.acknowledged.items():
            self.acknowledged.setdefault(task, []).extend(rows)


def _timed(tally: Tally, kind: str, fn, *args, **kwargs):
    """fn(*args, **kwargs) -> response, timed and counted under `kind`."""
    t0 = time.perf_counter()
    try:
        response = fn(*args, **kwargs)
    except httpx.TransportError:
        tally.transport_errors += 1
        return None
    tally.requests.append((kind, time.perf_counter() - t0, response.status_code))
    return response


def _puller(plan: Plan, i: int, lookup_only: bool, tally: Tally) -> None:
    task = plan.pull_tasks[i % len(plan.pull_tasks)]
    deadline = time.monotonic() + plan.seconds
    with httpx.Client(base_url=plan.url, headers=_auth(plan), timeout=60) as http:
        while time.monotonic() < deadline:
            r = _timed(tally, "manifest", http.get, f"/v1/tasks/{task}/bases/random")
            if r is None or r.status_code != 200 or lookup_only:
                continue
            for info in r.json()["layers"]:
                if time.monotonic() >= deadline:
                    break
                _pull_layer(http, info, tally)


def _pull_layer(http: httpx.Client, info: dict, tally: Tally) -> None:
    t0 = time.perf_counter()
    h, n = hashlib.sha256(), 0
    try:
        with http.stream("GET", info["url"]) as r:
            for block in r.iter_bytes():
                h.update(block)
                n += len(block)
            status = r.status_code
    except httpx.TransportError:
        tally.transport_errors += 1
        return
    tally.requests.append(("layer", time.perf_counter() - t0, status))
    if status == 200:
        tally.bytes_pulled += n
        if n != info["nbytes"] or h.hexdigest() != info["sha256"]:
            tally.sha_failures += 1


def _uploader(plan: Plan, i: int, tally: Tally) -> None:
    task = plan.upload_tasks[i]
    rng = np.random.default_rng(i)
    acked = tally.acknowledged.setdefault(task, [])
    step = plan.part_bytes // 4
    deadline = time.monotonic() + plan.seconds
    with httpx.Client(base_url=plan.url, headers=_auth(plan), timeout=60) as http:
        row = 0
        while time.monotonic() < deadline:
            values = {
                g: rng.standard_normal(d).astype("<f4") for g, d in plan.upload_groups.items()
            }
            for g, vec in values.items():
                for a in range(0, vec.size, step):
                    data = vec[a : a + step].tobytes()
                    headers = {
                        "Content-Type": "application/octet-stream",
                        "X-Tinysub-Sha256": hashlib.sha256(data).hexdigest(),
                    }
                    path = f"/v1/tasks/{task}/trajectory/rows/{row}/groups/{g}"
                    _timed(tally, "put", http.put, path, params={"offset": a}, content=data,
                           headers=headers)  # fmt: skip
            commit = f"/v1/tasks/{task}/trajectory/rows/{row}/commit"
            r = _timed(tally, "commit", http.post, commit, json={})
            if r is not None and r.status_code == 200:
                sums = {g: hashlib.sha256(v.tobytes()).hexdigest() for g, v in values.items()}
                if r.json()["sha256"] != sums:
                    tally.sha_failures += 1
                acked.append(sums)
                row += 1


def _auth(plan: Plan) -> dict[str, str]:
    return {"Authorization": f"Bearer {plan.token}"}


def _process(plan: Plan, roles: list[tuple[str, int]]) -> Tally:
    """Run this process' clients as threads; return their merged tally."""
    tallies = [Tally() for _ in roles]
    threads = []
    for (role, i), tally in zip(roles, tallies, strict=True):
        if role == "upload":
            target = (_uploader, (plan, i, tally))
        else:
            target = (_puller, (plan, i, role == "lookup", tally))
        threads.append(threading.Thread(target=target[0], args=target[1], daemon=True))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = Tally()
    for t in tallies:
        total.merge(t)
    return total


class RSSSampler(threading.Thread):
    def __init__(self, pid: int, every: float = 0.05) -> None:
        import psutil

        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.every = every
        self.start_rss = self.peak = self.last = self.proc.memory_info().rss
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.last = self.proc.memory_info().rss
            self.peak = max(self.peak, self.last)
            time.sleep(self.every)


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def summarize(tally: Tally, seconds: float, lost: int, rss: RSSSampler) -> dict:
    lat = [r[1] for r in tally.requests]
    statuses = Counter(r[2] for r in tally.requests)
    kinds = {}
    for kind in sorted({r[0] for r in tally.requests}):
        k_lat = [r[1] for r in tally.requests if r[0] == kind]
        kinds[kind] = {
            "requests": len(k_lat),
            "rps": round(len(k_lat) / seconds, 1),
            "p50_ms": round(1e3 * _percentile(k_lat, 50), 2),
            "p99_ms": round(1e3 * _percentile(k_lat, 99), 2),
        }
    return {
        "seconds": seconds,
        "requests": len(lat),
        "rps": round(len(lat) / seconds, 1),
        "p50_ms": round(1e3 * _percentile(lat, 50), 2),
        "p99_ms": round(1e3 * _percentile(lat, 99), 2),
        "by_kind": kinds,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "server_errors_5xx": sum(v for k, v in statuses.items() if k >= 500),
        "client_errors_4xx": sum(v for k, v in statuses.items() if 400 <= k < 500),
        "transport_errors": tally.transport_errors,
        "sha256_failures": tally.sha_failures,
        "rows_acknowledged": sum(len(v) for v in tally.acknowledged.values()),
        "rows_lost": lost,
        "pulled_MB": round(tally.bytes_pulled / MB, 1),
        "pull_MBps": round(tally.bytes_pulled / MB / seconds, 1),
        "server_rss_MB": {
            "start": round(rss.start_rss / MB, 1),
            "peak": round(rss.peak / MB, 1),
            "end": round(rss.last / MB, 1),
        },
    }


def lost_rows(url: str, token: str, acknowledged: dict[str, list[dict]]) -> int:
    """Acknowledged rows the registry does not hold with the same sha256 (must be 0)."""
    lost = 0
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as http:
        for task, rows in acknowledged.items():
            stored = http.get(f"/v1/tasks/{task}/trajectory").json()["row_sha256"]
            lost += sum(1 for i, sums in enumerate(rows) if i >= len(stored) or stored[i] != sums)
    return lost


def setup(server_url: str, token: str, args: argparse.Namespace) -> Plan:
    from client import Client
    from storage.layout import build_layout

    d = args.layer_values
    pull_layout = build_layout([("encoder.layer.0.w", (d,)), ("encoder.layer.1.w", (d,))])
    up = args.upload_values
    up_layout = build_layout([("encoder.layer.0.w", (up,)), ("encoder.layer.1.w", (up // 4,))])
    pull_tasks = ["pull-0", "pull-1"]
    upload_tasks = [f"up-{i}" for i in range(args.uploaders)]
    with Client(server_url, token=token, cache_dir=tempfile.mkdtemp()) as c:
        jobs = []
        for t in pull_tasks:
            c.create_task(t, model="load", layout=pull_layout)
            jobs.append(c.compute_basis(t, "random", rank=args.rank, seed=len(jobs)))
        for t in upload_tasks:
            c.create_task(t, model="load-up", layout=up_layout)
            c.request_json("POST", f"/v1/tasks/{t}/trajectory", json={})
        for job in jobs:
            job.wait(timeout=600)
    return Plan(
        url=server_url,
        token=token,
        seconds=args.seconds,
        pull_tasks=pull_tasks,
        upload_tasks=upload_tasks,
        upload_groups={g.name: g.size for g in up_layout.groups},
        part_bytes=args.part_bytes,
    )


def run_load(server, token: str, args: argparse.Namespace) -> dict:
    """Run the load against a started `services.local.LocalServer`; returns the summary."""
    plan = setup(server.url, token, args)
    roles = (
        [("pull", i) for i in range(args.pullers)]
        + [("upload", i) for i in range(args.uploaders)]
        + [("lookup", i) for i in range(args.lookups)]
    )
    groups = [roles[p :: args.procs] for p in range(args.procs)]
    rss = RSSSampler(server.pid)
    load_before = os.getloadavg()
    rss.start()
    t0 = time.perf_counter()
    if args.procs == 1:
        tallies = [_process(plan, roles)]
    else:
        with mp.get_context("spawn").Pool(args.procs) as pool:
            tallies = pool.starmap(_process, [(plan, g) for g in groups])
    wall = time.perf_counter() - t0  # includes starting the client processes
    rss.done.set()
    rss.join()
    total = Tally()
    for t in tallies:
        total.merge(t)
    # Rates over the window every client was running for (each ran `seconds` from its start).
    out = summarize(total, args.seconds, lost_rows(server.url, token, total.acknowledged), rss)
    out["wall_seconds"] = round(wall, 2)
    out["clients"] = {"pullers": args.pullers, "uploaders": args.uploaders, "lookups": args.lookups}
    out["processes"] = args.procs
    out["load_average_before"] = [round(x, 2) for x in load_before]
    out["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    out["cpus"] = os.cpu_count()
    out["layer_MB"] = round(4 * args.layer_values * args.rank / MB, 2)
    return out


def ok(summary: dict) -> bool:
    """The guarantees: no 5xx, no transport error, every sha256 right, no lost row, and every
    kind of client got work done."""
    kinds = summary["by_kind"]
    return (
        summary["server_errors_5xx"] == 0
        and summary["transport_errors"] == 0
        and summary["sha256_failures"] == 0
        and summary["rows_lost"] == 0
        and summary["client_errors_4xx"] == 0
        and all(kinds.get(k, {}).get("requests", 0) > 0 for k in ("manifest", "layer", "commit"))
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--pullers", type=int, default=16)
    p.add_argument("--uploaders", type=int, default=4)
    p.add_argument("--lookups", type=int, default=4)
    p.add_argument("--procs", type=int, default=4, help="Client processes (threads inside).")
    p.add_argument("--layer-values", type=int, default=262_144, help="D of each pulled layer.")
    p.add_argument("--rank", type=int, default=8, help="k of each pulled layer.")
    p.add_argument("--upload-values", type=int, default=65_536, help="D of an uploaded group.")
    p.add_argument("--part-bytes", type=int, default=64 << 10, help="Bytes per upload part.")
    p.add_argument("--small", action="store_true", help="Small layers (a smoke run).")
    p.add_argument("--out", type=Path, help="Write the summary as JSON here.")
    return p


def main(argv: list[str] | None = None) -> int:
    from services.local import LocalServer

    args = parser().parse_args(argv)
    if args.small:
        args.layer_values, args.upload_values, args.part_bytes = 16_384, 4_096, 8 << 10
    work = Path(tempfile.mkdtemp(prefix="tinysub-load-"))
    try:
        server = LocalServer(work / "registry", {"TINYSUB_JOB_POLL_SECONDS": "0.1"})
        token = server.admin_token()
        with server:
            summary = run_load(server, token, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary["ok"] = ok(summary)
    text = json.dumps(summary, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
