"""d90 (Li et al. 2018; Aghajanyan et al. 2021): the smallest subspace dimension whose
fine-tuning reaches 90% of the full fine-tuning score, found by search, never by hand.

The search assumes the score grows with d (what both papers observe) and bisects a grid of
candidate dimensions: log2(len(grid)) trainings find the bracket, and each refinement step
then tries the geometric midpoint of the bracket (one more training halves its ratio). Every
point is the mean over the configured seeds. Points already trained (e.g. intrinsic at 8, 16
and 32 from Tables 5/6) are reused through the ledger. If the scores are not monotone, d90 is
still the smallest dimension that passed, and the report shows every point tried.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from storage.errors import InvalidInput


class D90Search:
    def __init__(
        self,
        task: str,
        method: str,
        grid: Sequence[int],
        seeds: Sequence[int],
        target: float,
        *,
        refine: int = 1,
    ) -> None:
        if not grid:
            raise InvalidInput("a d90 search needs at least one candidate dimension")
        self.task = task
        self.method = method
        self.grid = sorted(set(int(d) for d in grid))
        self.seeds = tuple(seeds)
        self.target = float(target)
        self.refine = refine
        self.lo, self.hi = -1, len(self.grid)  # grid[lo] failed, grid[hi] passed
        self.scores: dict[int, dict[int, float]] = {}
        self.records: dict[int, list[dict[str, Any]]] = {}

    # ------------------------------------------------------------------ protocol
    def _current(self) -> int | None:
        if self.hi - self.lo > 1:
            return self.grid[(self.lo + self.hi) // 2]
        if self.refine > 0 and self.lo >= 0 and self.hi < len(self.grid):
            a, b = self.grid[self.lo], self.grid[self.hi]
            mid = int(round(math.sqrt(a * b)))
            if a < mid < b:
                self.grid.insert(self.hi, mid)
                self.hi += 1
                self.refine -= 1
                return mid
        return None

    def wanted(self) -> list[tuple[int, int]]:
        """(d, seed) points needed next; [] when the search is over."""
        d = self._current()
        if d is None:
            return []
        have = self.scores.get(d, {})
        return [(d, s) for s in self.seeds if s not in have]

    def tell(self, point: tuple[int, int], record: dict[str, Any]) -> None:
        d, seed = point
        self.scores.setdefault(d, {})[seed] = float(record["score"])
        self.records.setdefault(d, []).append(record)
        if len(self.scores[d]) < len(self.seeds) or d not in self.grid:
            return
        i = self.grid.index(d)
        if self.mean(d) >= self.target:
            self.hi = min(self.hi, i)
        else:
            self.lo = max(self.lo, i)
        if self.lo >= self.hi:  # not monotone: stop bisecting, report the smallest pass
            self.lo, self.hi, self.refine = 0, 0, 0

    # ------------------------------------------------------------------ results
    def mean(self, d: int) -> float:
        values = list(self.scores[d].values())
        return sum(values) / len(values)

    @property
    def done(self) -> int:
        return sum(len(v) for v in self.scores.values())

    @property
    def finished(self) -> bool:
        return not self.wanted() and self._complete()

    def _complete(self) -> bool:
        return all(len(v) == len(self.seeds) for v in self.scores.values())

    def remaining_estimate(self) -> int:
        steps = max(0, math.ceil(math.log2(max(1, self.hi - self.lo))))
        return (steps + self.refine) * len(self.seeds)

    def d90(self) -> int | None:
        passed = [
            d
            for d in self.scores
            if len(self.scores[d]) == len(self.seeds) and self.mean(d) >= self.target
        ]
        return min(passed) if passed else None

    def result(self) -> dict[str, Any]:
        first = next((r for rs in self.records.values() for r in rs), {})
        d90 = self.d90()
        return {
            "task": self.task,
            "method": self.method,
            "target": self.target,
            "seeds": list(self.seeds),
            "d90": d90,
            "free_params": _free_params(self.records.get(d90)) if d90 else None,
            "max_tried": max(self.scores) if self.scores else None,
            "metric": first.get("metric"),
            "points": [
                {"d": d, "score": self.mean(d), "n": len(self.scores[d])}
                for d in sorted(self.scores)
            ],
        }


def _free_params(records: list[dict[str, Any]] | None) -> int | None:
    return records[0].get("free_params") if records else None
