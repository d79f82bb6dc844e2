"""Seed statistics and verdicts: the numbers every table and finding of the report rests on.

Why on their own: a verdict must follow the same rule wherever it is computed (a gap within
seed noise, a share of tasks, the holds / partly bars), so the mean ± std of a cell, the gaps
between two methods and the verdict rule live once, here, knowing nothing of records, files or
markdown. A Finding is one verdict with the numbers behind it and its "Likely reason:" line.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

HOLDS, PARTLY, FAILS, NOT_RUN = "holds", "partly", "does not hold", "not run yet"


@dataclass(frozen=True)
class Stat:
    """Seed values of one cell; std is the sample std (ddof=1), None for a single value."""

    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if self.n >= 2 else None


def stat(values: Iterable[Any]) -> Stat | None:
    """The finite numbers among `values`, or None when there are none."""
    kept = tuple(float(v) for v in values if finite(v))
    return Stat(kept) if kept else None


def finite(v: Any) -> bool:
    """True for a real, finite number (not a bool): the only values a cell averages."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def verdict(
    value: float | None,
    holds: float,
    partly: float | None = None,
    *,
    lower_is_better: bool = False,
) -> str:
    """'holds' when `value` meets the `holds` bar, 'partly' when it meets the `partly` bar,
    else 'does not hold'; 'not run yet' without a value. Bars are inclusive."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NOT_RUN

    def meets(bar: float) -> bool:
        return value <= bar if lower_is_better else value >= bar

    if meets(holds):
        return HOLDS
    if partly is not None and meets(partly):
        return PARTLY
    return FAILS


def mean_gap(a: Mapping[str, Stat], b: Mapping[str, Stat]) -> float | None:
    """Mean over the tasks both have of (a - b), in points (x100)."""
    common = [t for t in a if t in b]
    if not common:
        return None
    return statistics.fmean(100 * (a[t].mean - b[t].mean) for t in common)


def share_above(a: Mapping[str, Stat], b: Mapping[str, Stat]) -> float | None:
    """Fraction of the tasks both have where a's mean is above b's."""
    common = [t for t in a if t in b]
    if not common:
        return None
    return sum(a[t].mean > b[t].mean for t in common) / len(common)


def seed_noise(a: Mapping[str, Stat], b: Mapping[str, Stat]) -> float | None:
    """Typical seed std of a comparison: mean over common tasks of the larger std, points."""
    stds = [
        100 * max(s.std or 0.0, o.std or 0.0)
        for t, s in a.items()
        if (o := b.get(t)) is not None and (s.std is not None or o.std is not None)
    ]
    return statistics.fmean(stds) if stds else None


def average(stats: Mapping[str, Stat]) -> float | None:
    """Mean over tasks of the per-task seed means, points."""
    return statistics.fmean(100 * s.mean for s in stats.values()) if stats else None


@dataclass
class Finding:
    key: str
    claim: str
    rule: str
    verdict: str
    measured: str = ""
    paper: str = ""
    reason: str = ""

    def __post_init__(self) -> None:
        if self.verdict == NOT_RUN:
            self.measured = ""  # nothing measured: the table shows "–"

    def markdown(self) -> str:
        head = f"**Verdict {self.key} ({self.claim}): {self.verdict}.**"
        if self.measured:
            head += f" Measured: {self.measured}."
        if self.paper:
            head += f" Paper: {self.paper}."
        lines = [head]
        if self.verdict != HOLDS:
            lines.append(
                f"Likely reason: {self.reason or 'no simple cause visible in the numbers'}."
            )
        return "\n\n".join(lines)
