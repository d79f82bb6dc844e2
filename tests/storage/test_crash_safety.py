"""SIGKILL an ingesting process mid-checkpoint: committed rows survive, nothing partial shows.

The child (tests/storage/crash_writer.py) is a real process running the real ingester against a
real store on disk; it dies by SIGKILL at chosen points (after some chunks of a row, during array
growth, between a marker's temporary file and its rename, right after a commit) or at a random
time chosen by this process. After each death the store must re-open, every committed row must
read back bit-identical to its source and to the sha256 in its marker, the interrupted row must
be invisible, and a resumed ingestion must end with the same store as an uninterrupted one.
Every trial must have killed a live writer (a child that finished first would pass vacuously):
test_every_trial_killed_a_live_writer counts them (`live_writer_kills`, printed with `-rP`).
"""

from __future__ import annotations

import json
import random

import pytest

from tests.storage.crash_harness import (
    SIZES,
    T,
    check_after_crash,
    count_events,
    empty_store,
    kill_mid_write,
    random_instant,
    reference_store,
    self_kill,
    write_source,
)

CHOSEN = [
    ("chunk:0:1", 0),  # theta0 half written
    ("chunk:1:3", 1),  # inside the first group of row 1
    ("chunk:3:6", 3),  # inside the second group of row 3
    ("meta:1", 2),  # array growth for row 2: one group grown, the other not
    ("marker-tmp:4", 4),  # all of row 4 written, marker not yet renamed into place
    ("marker:4", 5),  # row 4 committed, nothing of row 5 yet
]
SEEDS = [1, 2]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    folder = tmp_path_factory.mktemp("arrays")
    return folder, write_source(folder)


@pytest.fixture(scope="module")
def reference(source, tmp_path_factory):
    return reference_store(source[0], tmp_path_factory.mktemp("ref"))


@pytest.fixture(scope="module")
def events(source, tmp_path_factory):
    return count_events(source[0], tmp_path_factory.mktemp("count"))


@pytest.fixture(scope="module")
def deaths():
    """How each trial's child ended (crash_harness.Death), to count the live-writer kills."""
    return {}


@pytest.mark.parametrize(("kill", "committed"), CHOSEN)
def test_kill_at_a_chosen_point(tmp_path, source, reference, deaths, kill, committed):
    folder, arrays = source
    url = empty_store(tmp_path)
    death = deaths[kill] = self_kill(url, folder, kill)
    assert death.live and death.events >= 1, death  # killed by SIGKILL, having written
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


@pytest.mark.parametrize("seed", SEEDS)
def test_kill_at_a_random_time(tmp_path, source, reference, events, deaths, seed):
    folder, arrays = source
    url = empty_store(tmp_path)
    death = deaths["seed", seed] = kill_mid_write(
        url, folder, *random_instant(random.Random(seed), events)
    )
    assert death.live and death.events >= 1, death  # alive and writing when the kill came
    assert 0 <= check_after_crash(url, arrays, reference) < T


def test_a_child_that_finished_is_no_live_kill(tmp_path, source, reference, events):
    """The check the trials rely on: a kill that comes after the last write (as a timed kill
    could before, and still pass) is not counted as killing a live writer."""
    folder, arrays = source
    url = empty_store(tmp_path)
    death = kill_mid_write(url, folder, at=events, delay=1.0)
    assert death.events == events and death.finished and not death.live, death
    assert check_after_crash(url, arrays, reference) == T


def test_every_trial_killed_a_live_writer(deaths, record_property):
    trials = len(CHOSEN) + len(SEEDS)
    if len(deaths) < trials:
        pytest.skip("runs after all the trials")
    live = sum(d.live for d in deaths.values())
    record_property("live_writer_kills", f"{live}/{trials}")
    print(f"live_writer_kills: {live}/{trials}")
    assert live == trials, {k: d for k, d in deaths.items() if not d.live}
