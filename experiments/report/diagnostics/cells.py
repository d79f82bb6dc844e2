"""Small helpers of the diagnostics sections: JSON coercion and cell formats.

Why: the side files are hand-editable and often partial, so every section reads a value
through the same forgiving coercions (a dict that is not one reads as empty, a number that is
not finite as missing) and writes its cells with the same formats.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from experiments.report.markdown import DASH
from experiments.report.results import Record, Results
from experiments.report.stats import Stat, finite


def as_float(v: Any) -> float | None:
    """A finite float from a number or numeric string, else None."""
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def as_dict(v: Any) -> dict:
    """`v` when it is a dict, else an empty one: a malformed entry reads as missing."""
    return v if isinstance(v, dict) else {}


def dicts_in(v: Any) -> list[dict]:
    """The dicts in `v` when it is a list, else none."""
    return [x for x in v if isinstance(x, dict)] if isinstance(v, list) else []


def fmt_pct(x: float | None, digits: int = 1) -> str:
    """A share (0-1) as a percentage, or '–'."""
    return DASH if x is None else f"{100 * x:.{digits}f}"


def fmt_g(s: Stat | None) -> str:
    """'mean ± std' to 3 significant digits, for quantities without a natural scale."""
    if s is None:
        return DASH
    return f"{s.mean:.3g}" + (f" ± {s.std:.3g}" if s.std is not None else "")


def fmt_count(s: Stat | None) -> str:
    """'mean ± std' of a count, as whole numbers with thousands separators."""
    if s is None:
        return DASH
    return f"{s.mean:,.0f}" + (f" ± {s.std:,.0f}" if s.std is not None else "")


def mean_of(values: Iterable[Any]) -> float | None:
    """The mean of the finite numbers among `values`, or None."""
    kept = [float(v) for v in values if finite(v)]
    return statistics.fmean(kept) if kept else None


def ordered_tasks(res: Results, found: Iterable[str]) -> list[str]:
    """The config's task order first, then any other task the file names."""
    found = [t for t in found if isinstance(t, str)]
    return [t for t in res.tasks if t in found] + sorted(set(found) - set(res.tasks))


def figure_at(
    out_dir: Path, draw: bool, name: str, label: str, has_data: bool, plot: Callable
) -> str:
    """Draw a figure into `out_dir` and link it, or say why it is not drawn."""
    if not has_data:
        return f"{label}: not drawn, no data yet."
    if not draw:
        return f"{label}: not drawn (figures off)."
    plot(out_dir / name)
    return f"![{label}]({name})"


def seed_key(r: Record) -> str:
    """A record's seed as the str key the side files use."""
    # Seeds are str keys in the JSON files and ints in runs.jsonl: compare them as str.
    return str(r.get("seed"))
