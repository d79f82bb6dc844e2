"""Markdown of the report: cell formats, tables and sections.

Why apart: every section writes its cells the same way ('mean ± std' ×100, '–' for a missing
value, '(n=k)' when a cell lacks seeds, '(k/n)' after an average over some tasks only), so a
change of format is made once here and shows in every table alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from experiments.report.stats import Finding, Stat, average

DASH = "–"


def fmt(s: Stat | None, seeds: int | None = None, scale: float = 100.0, digits: int = 1) -> str:
    """'mean ± std' (x scale), just the mean for one value, '–' for none; '(n=k)' when k
    differs from the expected seed count."""
    if s is None:
        return DASH
    text = f"{s.mean * scale:.{digits}f}"
    if s.std is not None:
        text += f" ± {s.std * scale:.{digits}f}"
    if seeds is not None and s.n != seeds:
        text += f" (n={s.n})"
    return text


def fmt_pts(x: float | None, signed: bool = False) -> str:
    """A value already in points, one decimal ('+' when `signed`, for differences)."""
    if x is None:
        return DASH
    return f"{x:+.1f}" if signed else f"{x:.1f}"


@dataclass
class Section:
    title: str
    body: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    def markdown(self) -> str:
        parts = [f"## {self.title}", *self.body, *(f.markdown() for f in self.findings)]
        return "\n\n".join(p for p in parts if p)


def md_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A GitHub markdown table; cells are written as they are (no escaping)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt_int(x: float | None) -> str:
    """A count with thousands separators, for parameter counts."""
    return DASH if x is None else f"{int(round(x)):,}"


def avg_cell(stats: Mapping[str, Stat], tasks: Sequence[str]) -> str:
    """Mean over tasks of the per-task seed means (points); '(k/n)' when only k of the n
    `tasks` have a value, so a partial average is never read as a full one."""
    avg = average(stats)
    if avg is None:
        return DASH
    return fmt_pts(avg) + ("" if len(stats) == len(tasks) else f" ({len(stats)}/{len(tasks)})")
