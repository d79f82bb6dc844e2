"""SIGKILL the ingesting process at random points, 30 times: at a write event drawn at random
from all the events an ingestion makes (24 trials: after any chunk or metadata write, before or
after any row marker's rename), and at a random instant of a slowed-down ingestion (6 trials).
After each death the store re-opens, every committed row is bit-identical to its source and
its sha256, no partial row is visible, and resuming gives the uninterrupted store byte for byte
(tests/storage/crash_harness.check_after_crash)."""

from __future__ import annotations

import random
import signal
import subprocess

import pytest

from tests.storage.crash_harness import (
    T,
    check_after_crash,
    count_events,
    empty_store,
    reference_store,
    spawn,
    write_source,
)

EVENT_TRIALS = 24
TIMED_TRIALS = 6


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    folder = tmp_path_factory.mktemp("arrays")
    return folder, write_source(folder)


@pytest.fixture(scope="module")
def reference(source, tmp_path_factory):
    return reference_store(source[0], tmp_path_factory.mktemp("ref"))


@pytest.fixture(scope="module")
def events(source, tmp_path_factory):
    n = count_events(source[0], tmp_path_factory.mktemp("count"))
    assert n > 3 * T  # chunks, metadata and markers of every row
    return n


@pytest.fixture(scope="module")
def outcomes():
    """Rows committed at each death, to check the trials spread over the whole ingestion."""
    return {}


@pytest.mark.parametrize("trial", range(EVENT_TRIALS))
def test_kill_at_a_random_write_event(tmp_path, source, reference, events, outcomes, trial):
    folder, arrays = source
    at = random.Random(1000 + trial).randint(1, events)
    url = empty_store(tmp_path)
    child = spawn(url, folder, f"event:{at}")
    _, err = child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL, err  # it died, it did not finish
    outcomes[trial] = check_after_crash(url, arrays, reference)


def test_the_kills_fell_all_over_the_ingestion(outcomes):
    if len(outcomes) < EVENT_TRIALS:
        pytest.skip("runs after the event trials")
    assert min(outcomes.values()) <= 1 and max(outcomes.values()) >= T - 2, outcomes


@pytest.mark.parametrize("trial", range(TIMED_TRIALS))
def test_kill_at_a_random_instant(tmp_path, source, reference, trial):
    folder, arrays = source
    url = empty_store(tmp_path)
    child = spawn(url, folder, "sleep:0.01")  # ~0.1 s a row: the instant is anywhere in it
    assert child.stdout.readline().strip() == "ready"
    try:
        child.wait(timeout=random.Random(trial).uniform(0.0, 0.9))
    except subprocess.TimeoutExpired:
        child.send_signal(signal.SIGKILL)
    child.communicate(timeout=60)
    assert 0 <= check_after_crash(url, arrays, reference) <= T
