"""The d90 search: bisection over the grid, geometric refinement, reuse of known points."""

from __future__ import annotations

import math

import pytest

from experiments.d90 import D90Search
from storage.errors import InvalidInput


def drive(search: D90Search, score) -> list[int]:
    """Answer the search's requests with score(d, seed); return the dims it trained, in order."""
    asked = []
    while wanted := search.wanted():
        for d, seed in wanted:
            asked.append(d)
            search.tell((d, seed), {"score": score(d, seed), "free_params": d * 6})
    assert search.finished
    return asked


def saturating(d: int, seed: int = 0) -> float:
    return 1 - math.exp(-d / 300)  # reaches 0.9 at d = 300 ln 10 = 690.8


def test_bisection_finds_the_smallest_passing_grid_point():
    grid = [16, 64, 256, 1024, 4096, 16384]
    search = D90Search("t", "fastfood", grid, [0], target=0.9, refine=0)
    asked = drive(search, saturating)
    assert search.d90() == 1024
    assert len(asked) <= math.ceil(math.log2(len(grid))) + 1
    result = search.result()
    assert result["d90"] == 1024 and result["free_params"] == 1024 * 6
    assert [p["d"] for p in result["points"]] == sorted(set(asked))


def test_refinement_tries_the_geometric_midpoint():
    search = D90Search("t", "fastfood", [256, 1024, 4096], [0], target=0.9, refine=1)
    asked = drive(search, saturating)
    assert 512 in asked  # sqrt(256 * 1024)
    assert search.d90() == 1024  # 512 fails: 1 - exp(-512/300) = 0.82


def test_refinement_can_lower_d90():
    search = D90Search("t", "intrinsic", [4, 16, 64], [0], target=0.5, refine=1)
    drive(search, lambda d, s: 1.0 if d >= 8 else 0.0)
    assert search.d90() == 8


def test_every_point_is_a_mean_over_seeds():
    search = D90Search("t", "intrinsic", [1, 2, 4, 8], [0, 1, 2], target=0.5, refine=0)
    # seed 2 alone would pass at d = 1; the mean passes only from d = 4
    asked = drive(search, lambda d, s: (1.0 if s == 2 else 0.0) if d < 4 else 0.8)
    assert search.d90() == 4
    assert len(asked) % 3 == 0
    assert all(p["n"] == 3 for p in search.result()["points"])


def test_not_reached_reports_none_and_the_largest_d_tried():
    search = D90Search("t", "fastfood", [16, 64, 256], [0], target=0.99, refine=1)
    drive(search, saturating)
    assert search.d90() is None
    assert search.result()["max_tried"] == 256


def test_known_points_are_used_without_training():
    search = D90Search("t", "intrinsic", [1, 2, 4, 8, 16, 32], [0], target=0.5, refine=0)
    # already trained (Tables 5/6): 8 and 16 pass, 32 too
    for d in (8, 16, 32):
        search.tell((d, 0), {"score": 0.9})
    asked = drive(search, lambda d, s: 0.9 if d >= 4 else 0.1)
    assert 8 not in asked and 16 not in asked
    assert search.d90() == 4


def test_non_monotone_scores_stop_at_the_smallest_pass():
    search = D90Search("t", "intrinsic", [1, 2, 4, 8], [0], target=0.5, refine=1)
    search.tell((4, 0), {"score": 0.9})
    search.tell((8, 0), {"score": 0.1})  # contradicts monotonicity
    drive(search, lambda d, s: 0.0)
    assert search.d90() == 4


def test_an_empty_grid_is_refused():
    with pytest.raises(InvalidInput):
        D90Search("t", "fastfood", [], [0], target=0.5)
