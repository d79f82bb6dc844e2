"""The columns the paper's tables share: our rows beside the paper's, parameter counts, figures.

Why shared: Tables 1-3 put our mean ± std per task beside the paper's number for each task's
GLUE analog, in the same layout and with the same note, and several sections count free
parameters or link a figure the same way; one definition keeps them alike.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence

from experiments import paper_numbers as paper
from experiments.report.markdown import avg_cell
from experiments.report.results import Record, Results
from experiments.report.stats import Stat, finite

# Ensemble size h of the subspace runs (free_params counts their mean once, as the papers do).
H = paper.PAPER_ENSEMBLE

PAPER_COLUMNS_NOTE = (
    "Paper rows: each task's GLUE analog (rotten_tomatoes → SST-2, vader_movies → STS-B, "
    "sms_spam → CoLA); trec6 has none and shows the paper's average. `*`: mean of the paper's "
    "eight columns, computed here (that table prints no average). Scores ×100, mean ± std "
    "over seeds (sample std); `(n=k)` when a cell has k runs instead of one per seed; "
    "`(k/n)` after an average: over k of the n tasks only."
)


def task_label(task: str) -> str:
    """A task's column head with the paper column it is compared with."""
    column = paper.analog_column(task)
    return f"{task} ({column})" if column != "Avg." else f"{task} (paper Avg.)"


def our_rows(res: Results, rows: Mapping[str, Mapping[str, Stat]]) -> list[list[str]]:
    """label | one cell per task | Avg. (mean over tasks, '(k/n)' when tasks are missing)."""
    return [
        [label, *(res.fmt(stats.get(t)) for t in res.tasks), avg_cell(stats, res.tasks)]
        for label, stats in rows.items()
    ]


def _paper_avg(row: Mapping[str, float]) -> tuple[float, str]:
    if "Avg." in row:
        return row["Avg."], ""
    return statistics.fmean(row[g] for g in paper.GLUE), "*"


def paper_rows(res: Results, rows: Mapping[str, Mapping[str, float]]) -> list[list[str]]:
    """The paper's rows over our task columns (each task's GLUE analog); '*' marks a mean of
    the paper's eight columns computed here (the paper prints no average for that table)."""
    out = []
    for label, row in rows.items():
        cells = []
        for t in res.tasks:
            value, column = paper_value_cell(row, t)
            cells.append(value + ("*" if column.startswith("mean") else ""))
        avg, mark = _paper_avg(row)
        out.append([f"paper {label}", *cells, f"{avg:.2f}{mark}"])
    return out


def paper_value_cell(row: Mapping[str, float], task: str) -> tuple[str, str]:
    """(the paper's number for `task`, two decimals; the column it comes from)."""
    value, column = paper.paper_value(row, task)
    return f"{value:.2f}", column


def paper_gap(table: Mapping, model: str, a: str, b: str) -> float:
    """The paper's average of `a` minus that of `b` for `model`, in points."""
    return _paper_avg(table[model][a])[0] - _paper_avg(table[model][b])[0]


def paper_count(table: Mapping, model: str, a: str, b: str) -> str:
    """On how many of the paper's GLUE tasks `a` beats `b`, as 'k/n'."""
    wins = sum(table[model][a][g] > table[model][b][g] for g in paper.GLUE)
    return f"{wins}/{len(paper.GLUE)}"


def median_of(records: Sequence[Record], key: str) -> float | None:
    """The median of `key` over the records that have a finite one, or None."""
    values = [r[key] for r in records if finite(r.get(key))]
    return statistics.median(values) if values else None


def figure_line(
    res: Results, draw: bool, name: str, label: str, has_data: bool, plot: Callable
) -> str:
    """Draw a figure into DIR and link it, or say why it is not drawn (no runs yet,
    figures off, or no DIR to draw into)."""
    if not has_data:
        return f"{label}: not drawn, no runs yet."
    if not draw or res.out_dir is None:
        return f"{label}: not drawn (figures off)."
    plot(res.out_dir / name)
    return f"![{label}]({name})"
