"""SIGKILL an ingesting process mid-checkpoint: committed rows survive, nothing partial shows.

The child (tests/storage/crash_writer.py) is a real process running the real ingester against a
real store on disk; it dies by SIGKILL at chosen points (after some chunks of a row, during array
growth, between a marker's temporary file and its rename, right after a commit) or at a random
time chosen by this process. After each death the store must re-open, every committed row must
read back bit-identical to its source and to the sha256 in its marker, the interrupted row must
be invisible, and a resumed ingestion must end with the same store as an uninterrupted one.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess

import pytest

from tests.storage.crash_harness import (
    SIZES,
    T,
    check_after_crash,
    empty_store,
    reference_store,
    spawn,
    write_source,
)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    folder = tmp_path_factory.mktemp("arrays")
    return folder, write_source(folder)


@pytest.fixture(scope="module")
def reference(source, tmp_path_factory):
    return reference_store(source[0], tmp_path_factory.mktemp("ref"))


@pytest.mark.parametrize(
    ("kill", "committed"),
    [
        ("chunk:0:1", 0),  # theta0 half written
        ("chunk:1:3", 1),  # inside the first group of row 1
        ("chunk:3:6", 3),  # inside the second group of row 3
        ("meta:1", 2),  # array growth for row 2: one group grown, the other not
        ("marker-tmp:4", 4),  # all of row 4 written, marker not yet renamed into place
        ("marker:4", 5),  # row 4 committed, nothing of row 5 yet
    ],
)
def test_kill_at_a_chosen_point(tmp_path, source, reference, kill, committed):
    folder, arrays = source
    url = empty_store(tmp_path)
    child = spawn(url, folder, kill)
    _, err = child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL, err
    # The process really died mid-way: the half-done work is on disk.
    kind, _, arg = kill.partition(":")
    if kind == "chunk":
        row, k = (int(x) for x in arg.split(":"))
        written = [p for p in url.glob(f"*/c/{row}/*") if p.name.isdigit()]
        assert len(written) >= k
    elif kind == "meta":
        shapes = [json.loads((url / g / "zarr.json").read_text())["shape"][0] for g in SIZES]
        assert shapes == [4, 2]  # one array grown, the other not
    elif kind == "marker-tmp":
        assert list((url / "_rows").glob(f"{int(arg):08d}.json.tmp-*"))
    assert check_after_crash(url, arrays, reference) == committed


@pytest.mark.parametrize("seed", [1, 2])
def test_kill_at_a_random_time(tmp_path, source, reference, seed):
    folder, arrays = source
    url = empty_store(tmp_path)
    child = spawn(url, folder, "sleep:0.02")  # ~0.15 s a row
    assert child.stdout.readline().strip() == "ready"
    try:
        child.wait(timeout=random.Random(seed).uniform(0.05, 0.8))
    except subprocess.TimeoutExpired:
        child.send_signal(signal.SIGKILL)
    child.communicate(timeout=60)
    # seeds 1 and 2 die before theta0 is committed and during row 4, at this pace.
    assert 0 <= check_after_crash(url, arrays, reference) <= T
