"""Progress and wall time of the phases of a basis computation.

One object is handed to every stage (solve, project, commit), so each reports its own phases
the same way and `ComputeReport.seconds` comes out of the stages without them returning it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

Progress = Callable[[str, int, int], None]  # progress(phase, done, total)
Tick = Callable[[int], None]  # per finished task: tick(how many)


class Phases:
    """Counts finished tasks per phase for `progress` and times named stretches of work."""

    def __init__(self, progress: Progress | None = None) -> None:
        self.progress = progress
        self.seconds: dict[str, float] = {}

    def tick(self, phase: str, total: int) -> Tick:
        """A callback for an executor's map: each call adds finished tasks to `phase` and
        reports (phase, done, total) to progress, if any."""
        done = [0]

        def cb(k: int) -> None:
            done[0] += k
            if self.progress:
                self.progress(phase, done[0], total)

        return cb

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        """Record the wall time of the block as seconds[name] (only when it succeeds: a failed
        computation reports nothing)."""
        t0 = time.perf_counter()
        yield
        self.seconds[name] = time.perf_counter() - t0
