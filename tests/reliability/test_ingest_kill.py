"""SIGKILL the ingesting process at random points, 30 times: at a write event drawn at random
from all the events an ingestion makes (24 trials: after any chunk or metadata write, before or
after any row marker's rename), and at a random instant of a slowed-down ingestion (6 trials).
After each death the store re-opens, every committed row is bit-identical to its source and
its sha256, no partial row is visible, and resuming gives the uninterrupted store byte for byte
(tests/storage/crash_harness.check_after_crash).

Every trial must have killed a live writer (not one that had already finished, which would pass
every check vacuously); test_every_trial_killed_a_live_writer counts them and records the count
as the `live_writer_kills` property (`-rP` prints it, `--junitxml` stores it).
"""

from __future__ import annotations

import random

import pytest

from tests.storage.crash_harness import (
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


@pytest.fixture(scope="module")
def deaths():
    """How each trial's child ended (crash_harness.Death), to count the live-writer kills."""
    return {}


@pytest.mark.parametrize("trial", range(EVENT_TRIALS))
def test_kill_at_a_random_write_event(tmp_path, source, reference, events, outcomes, deaths, trial):
    folder, arrays = source
    at = random.Random(1000 + trial).randint(1, events)
    url = empty_store(tmp_path)
    death = deaths["event", trial] = self_kill(url, folder, f"event:{at}")
    assert death.live, death  # it died by SIGKILL before finishing
    assert death.events == at - 1, death  # ... at the event drawn, having written up to it
    outcomes[trial] = check_after_crash(url, arrays, reference)


def test_the_kills_fell_all_over_the_ingestion(outcomes):
    if len(outcomes) < EVENT_TRIALS:
        pytest.skip("runs after the event trials")
    assert min(outcomes.values()) <= 1 and max(outcomes.values()) >= T - 2, outcomes


@pytest.mark.parametrize("trial", range(TIMED_TRIALS))
def test_kill_at_a_random_instant(tmp_path, source, reference, events, deaths, trial):
    folder, arrays = source
    url = empty_store(tmp_path)
    death = deaths["timed", trial] = kill_mid_write(
        url, folder, *random_instant(random.Random(trial), events)
    )
    assert death.live and death.events >= 1, death  # alive and writing when the kill came
    assert 0 <= check_after_crash(url, arrays, reference) < T


def test_every_trial_killed_a_live_writer(deaths, record_property):
    trials = EVENT_TRIALS + TIMED_TRIALS
    if len(deaths) < trials:
        pytest.skip("runs after all the trials")
    live = sum(d.live for d in deaths.values())
    record_property("live_writer_kills", f"{live}/{trials}")
    print(f"live_writer_kills: {live}/{trials}")
    assert live == trials, {k: d for k, d in deaths.items() if not d.live}
