"""The "Likely reason:" hints of a verdict that is not "holds", from the same numbers.

Why apart from the findings: the same few causes recur across the paper's tables (the encoder
barely moves on a task, the gap is within seed noise, ties that are not losses), and each
finding joins the ones that apply; phrasing them once keeps the report's reasons comparable.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from experiments.report.markdown import fmt_pts
from experiments.report.results import Results
from experiments.report.selectors import is_freeze, is_full
from experiments.report.stats import Stat, seed_noise


def gaps_by_task(a: Mapping[str, Stat], b: Mapping[str, Stat]) -> dict[str, float]:
    """task -> a − b of the seed means, in points, for the tasks both have."""
    return {t: 100 * (a[t].mean - b[t].mean) for t in a if t in b}


def per_task_list(values: Mapping[str, float], signed: bool = False) -> str:
    """'task value, task value' in points, as the hints list them."""
    return ", ".join(f"{t} {fmt_pts(v, signed)}" for t, v in values.items())


def noise_hint(gap: float | None, a: Mapping[str, Stat], b: Mapping[str, Stat]) -> str:
    """A hint when a gap is no larger than the typical seed std of the comparison."""
    noise = seed_noise(a, b)
    if gap is None or noise is None or abs(gap) > noise:
        return ""
    return (
        f"the gap ({fmt_pts(gap)} points) is within seed noise (typical seed std {fmt_pts(noise)})"
    )


def still_hint(res: Results, tasks: Iterable[str] | None = None, bar: float = 2.0) -> str:
    """Tasks where freezing the encoder is already within `bar` points of full."""
    full, freeze = res.per_task(is_full), res.per_task(is_freeze)
    gaps = gaps_by_task(full, freeze)
    still = {t: g for t, g in gaps.items() if g < bar and (tasks is None or t in tasks)}
    if not still:
        return ""
    which = "this task" if len(still) == 1 else "these tasks"
    return (
        f"the encoder barely needs to move on {which}: full − freeze = "
        f"{per_task_list(still)} points"
    )


def losses_hint(gaps: Mapping[str, float], what: str) -> str:
    """Non-wins of a comparison, ties (identical scores) named apart from real losses."""
    tied = [t for t, g in gaps.items() if abs(g) < 1e-9]
    below = {t: g for t, g in gaps.items() if g <= -1e-9}
    return join_hints(
        f"identical scores on {', '.join(tied)}" if tied else "",
        f"{what} on {per_task_list(below, True)} points" if below else "",
    )


def join_hints(*hints: str) -> str:
    """The hints that apply, '; '-joined (empty ones are dropped)."""
    return "; ".join(h for h in hints if h)
