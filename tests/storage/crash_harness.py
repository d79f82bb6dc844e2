"""The SIGKILL-an-ingester harness shared by the storage crash tests and tests/reliability.

The child (tests/storage/crash_writer.py) is a real process running the real ingester against a
real store on disk and dying by SIGKILL at a chosen point; `check_after_crash` then proves the
guarantees: the store re-opens, committed rows read back bit-identical (and match their sha256),
the interrupted row is invisible, and resuming gives the uninterrupted store byte for byte.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from storage.errors import NotFound
from storage.ingest import flat_layout, ingest_arrays
from storage.trajectory import TrajectoryStore

ROOT = Path(__file__).resolve().parents[2]
T, SIZES, CHUNK = 6, {"layer.0": 1230, "layer.1": 420}, 256  # 5 + 2 chunks per row


def write_source(folder: Path) -> dict[str, np.ndarray]:
    """T rows of each group as .npy files: the ingester's input."""
    rng = np.random.default_rng(0)
    arrays = {g: rng.standard_normal((T, d)).astype(np.float32) for g, d in SIZES.items()}
    for g, a in arrays.items():
        np.save(folder / f"{g}.npy", a)
    return arrays


def empty_store(folder: Path) -> Path:
    # Capacity 2: row 2 makes the arrays grow, so growth is interrupted too.
    url = folder / "traj"
    TrajectoryStore.create(url, flat_layout(SIZES), chunk_cols=CHUNK, capacity=2)
    return url


def reference_store(source: Path, folder: Path) -> TrajectoryStore:
    url = empty_store(folder)
    ingest_arrays(url, source)
    return TrajectoryStore.open(url)


def spawn(url: Path, folder: Path, kill: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.storage.crash_writer", str(url), str(folder), kill],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def count_events(source: Path, folder: Path) -> int:
    """How many write events an uninterrupted ingestion makes (event:N kills in 1..this)."""
    child = spawn(empty_store(folder), source, "count")
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    return int(out.split("events")[-1])


def check_after_crash(url: Path, arrays: dict, reference: TrajectoryStore) -> int:
    """Every guarantee after a crash; returns the number of rows the crash left committed."""
    store = TrajectoryStore.open(url)  # re-opens
    n = store.num_rows
    for info in store.rows:
        for g, a in arrays.items():
            got = store.read_row(info.index, g)
            assert got.tobytes() == a[info.index].tobytes()
            assert info.sha256[g] == reference.rows[info.index].sha256[g]
    assert store.verify() == []
    if n < T:
        with pytest.raises(NotFound):  # the interrupted row is not visible
            store.read_block("layer.0", rows=[n])
    # Resuming finishes the job and gives the uninterrupted store, byte for byte.
    report = ingest_arrays(url, arrays)
    assert report.verified == n and report.written == T - n
    resumed = TrajectoryStore.open(url)
    assert [r.sha256 for r in resumed.rows] == [r.sha256 for r in reference.rows]
    for g in SIZES:
        assert resumed.read_block(g).tobytes() == reference.read_block(g).tobytes()
    assert resumed.verify() == []
    return n
