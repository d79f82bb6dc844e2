"""What opening a trajectory store costs as it grows: metadata reads and wall time per open.

    python benchmarks/store_open.py [--rows 10 1000] [--repeat 20] [--out FILE.json]

Builds a local store of each row count (two small groups: the rows' metadata is what an open
reads, not their values), then opens it `--repeat` times read-only, as the registry does on
every part upload and GET. Reports per row count:

- reads_per_open: small documents read (`Location.read_bytes`: manifest, row markers, index);
- lists_per_open: directory listings (`Location.list`);
- open_ms: median wall time of one open, in milliseconds (warm page cache).

FILE.json is a list of {metric, rows, value, unit}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from storage.layout import build_layout  # noqa: E402
from storage.objects import Location  # noqa: E402
from storage.trajectory import TrajectoryStore  # noqa: E402

LAYOUT = build_layout([("encoder.layer.0.w", (64,)), ("encoder.layer.1.w", (32,))])


def build(url: Path, rows: int) -> None:
    # fsync is switched off while building: the benchmark measures opening, and the
    # store's durability is not what is being measured here.
    rng = np.random.default_rng(0)
    with mock.patch.object(os, "fsync", lambda fd: None):
        store = TrajectoryStore.create(url, LAYOUT, chunk_cols=64, capacity=rows)
        for i in range(rows):
            row = {g.name: rng.standard_normal(g.size).astype(np.float32) for g in LAYOUT.groups}
            store.append(row, step=i, metrics={"loss": 1.0 / (i + 1)})


def measure(url: Path, repeat: int) -> dict[str, float]:
    counts = {"read": 0, "list": 0}
    real_read, real_list = Location.read_bytes, Location.list

    def read_bytes(self, *parts):
        counts["read"] += 1
        return real_read(self, *parts)

    def listing(self, *parts):
        counts["list"] += 1
        return real_list(self, *parts)

    times = []
    with (
        mock.patch.object(Location, "read_bytes", read_bytes),
        mock.patch.object(Location, "list", listing),
    ):
        for _ in range(repeat):
            start = time.perf_counter()
            TrajectoryStore.open(url)
            times.append(time.perf_counter() - start)
    return {
        "reads_per_open": counts["read"] / repeat,
        "lists_per_open": counts["list"] / repeat,
        "open_ms": 1000 * statistics.median(times),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10, 1000])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    units = {"reads_per_open": "reads", "lists_per_open": "listings", "open_ms": "ms"}
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for rows in args.rows:
            url = Path(tmp, f"traj-{rows}")
            build(url, rows)
            for metric, value in measure(url, args.repeat).items():
                results.append({"metric": metric, "rows": rows, "value": value})
                print(f"{rows:>6} rows  {metric:<15} {value:10.2f} {units[metric]}")
    if args.out:
        for r in results:
            r["unit"] = units[r["metric"]]
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
