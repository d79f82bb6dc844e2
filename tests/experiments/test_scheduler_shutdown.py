"""A stopped experiment leaves no training process behind.

Before, `kill` of `tinysub experiment paper` left its spawned pool workers training for
minutes, holding the CPU the next run needed. These tests kill a real parent and watch its
real spawned workers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]

# Prints the pool workers' pids, then blocks; the test kills it.
SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    from experiments.ledger import Ledger
    from experiments.scheduler import Scheduler

    if __name__ == "__main__":
        with Scheduler(Ledger(sys.argv[1]), workers=2) as s:
            pids = {s._pool.submit(os.getpid).result() for _ in range(8)}
            for _ in range(2):
                s._pool.submit(time.sleep, 600)
            print(" ".join(map(str, sorted(pids))), flush=True)
            time.sleep(600)
    """
)


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def start(tmp_path: Path) -> tuple[subprocess.Popen, list[int]]:
    script = tmp_path / "hold.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "ledger")],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    line = proc.stdout.readline()
    assert line, "the script died before its workers started"
    workers = [int(p) for p in line.split()]
    assert workers and all(not gone(p) for p in workers)
    return proc, workers


def wait_gone(pids: list[int], seconds: float = 20.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        alive = [p for p in pids if not gone(p)]
        if not alive:
            return []
        time.sleep(0.2)
    return alive


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_killing_the_experiment_stops_its_workers(tmp_path, sig):
    proc, workers = start(tmp_path)
    try:
        started = time.monotonic()
        proc.send_signal(sig)
        code = proc.wait(timeout=30)
        # SIGTERM unwinds without waiting for the 600 s runs; SIGKILL cannot be caught.
        assert code in (128 + sig, -sig)
        assert time.monotonic() - started < 15
        assert wait_gone(workers) == [], "a pool worker outlived the killed experiment"
    finally:
        for pid in [proc.pid, *workers]:
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)
