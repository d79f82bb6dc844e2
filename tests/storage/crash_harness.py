"""The SIGKILL-an-ingester harness shared by the storage crash tests and tests/reliability.

The child (tests/storage/crash_writer.py) is a real process running the real ingester against a
real store on disk and dying by SIGKILL at a chosen point; `check_after_crash` then proves the
guarantees: the store re-opens, committed rows read back bit-identical (and match their sha256),
the interrupted row is invisible, and resuming gives the uninterrupted store byte for byte.

A trial proves something only if SIGKILL struck a writer that was still alive and writing: a
child that had finished first passes every check vacuously. Each trial therefore returns a
`Death`, and the test files count the trials whose `Death.live` holds.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
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
    (total,) = (int(line.split()[1]) for line in out.splitlines() if line.startswith("events "))
    return total


@dataclass(frozen=True)
class Death:
    """How a crash child ended, from its exit status and its progress lines on stdout."""

    returncode: int
    alive_at_kill: bool  # still running when SIGKILL was sent (a self-kill is always alive)
    events: int  # write events it reported surviving
    finished: bool  # it printed `done`: the ingestion had returned
    stderr: str

    @property
    def live(self) -> bool:
        """SIGKILL struck a running writer before its ingestion returned."""
        return self.returncode == -signal.SIGKILL and self.alive_at_kill and not self.finished


def _death(child: subprocess.Popen, alive_at_kill: bool, out: str, err: str) -> Death:
    lines = [line.strip() for line in out.splitlines()]
    events = sum(line.startswith("event ") for line in lines)
    return Death(child.returncode, alive_at_kill, events, "done" in lines, err)


def self_kill(url: Path, folder: Path, kill: str) -> Death:
    """Run a child that SIGKILLs itself at `kill` (crash_writer's KILL) and see how it ended."""
    child = spawn(url, folder, kill)
    out, err = child.communicate(timeout=60)
    return _death(child, True, out, err)


KILL_MARGIN = 12  # timed kills fall before the last 12 write events (>= 0.36 s before the end)
PAUSE = 0.03  # seconds the slowed child sleeps after each write event


def random_instant(rng: random.Random, events: int) -> tuple[int, float]:
    """A random instant of the writing, for `kill_mid_write`: a write event `at` in
    1..events - KILL_MARGIN and a delay of up to two pauses after it. At least KILL_MARGIN
    pauses of writing remain after `at`, so a parent delayed by load (0.3 s and more) still
    finds the writer alive."""
    return rng.randint(1, events - KILL_MARGIN), rng.uniform(0.0, 2 * PAUSE)


def kill_mid_write(url: Path, folder: Path, at: int, delay: float) -> Death:
    """SIGKILL a slowed-down ingestion from this process, `delay` seconds after the child
    reports its write event `at` (it sleeps PAUSE after each event, so the kill lands in a
    pause or in the write after it); `Death.live` says whether it struck a running writer."""
    child = spawn(url, folder, f"sleep:{PAUSE}")
    seen = []
    for line in child.stdout:
        seen.append(line)
        if line.strip() == f"event {at}":
            break
    time.sleep(delay)
    alive = child.poll() is None
    if alive:
        child.send_signal(signal.SIGKILL)
    # Read on through the same buffered file: communicate() would miss lines it holds already.
    out = "".join(seen) + child.stdout.read()
    err = child.stderr.read()
    child.wait(timeout=60)
    return _death(child, alive, out, err)


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
