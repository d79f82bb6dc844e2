"""Runs that ended below the frozen encoder of their task and seed (diverged or harmful runs).

Why: a mean over seeds hides one run that broke the encoder; this section counts and lists
them and shows the median beside each mean.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from experiments.report.diagnostics.cells import as_float, fmt_pct, seed_key
from experiments.report.markdown import DASH, Section, fmt, fmt_pts, md_table
from experiments.report.results import Record, Results
from experiments.report.stats import finite, stat

T_BELOW = "Runs below freeze"

# Runs of the Table 1 kind: a subspace of the encoder trained beside embeddings and head.
TABLE1_PHASES = ("table1", "ablation", "transfer", "unified")
TABLE1_METHODS = ("intrinsic", "random", "transfer", "unified", "zeroshot")
MAX_LISTED = 40  # rows of the below-freeze list; the count covers them all


def table1_style(r: Record) -> bool:
    return r.get("phase") in TABLE1_PHASES and r["method"] in TABLE1_METHODS


def freeze_means(res: Results) -> dict[tuple[str, str], float]:
    """(task, seed) -> mean score of the freeze runs (method freeze, variant '-')."""
    cells: dict[tuple[str, str], list[float]] = {}
    for r in res.records:
        if (
            r["method"] == "freeze"
            and r.get("variant", "-") in ("-", None)
            and finite(r.get("score"))
        ):
            cells.setdefault((r["task"], seed_key(r)), []).append(float(r["score"]))
    return {k: statistics.fmean(v) for k, v in cells.items()}


def below_freeze(res: Results) -> tuple[list[tuple[Record, float]], int, int]:
    """(runs below the freeze mean of their task and seed, with that mean; runs compared; runs
    without a freeze to compare with). A score that is not a number counts as below, as in
    worker.finetune.diagnostics.diverged."""
    freeze = freeze_means(res)
    below, compared, lacking = [], 0, 0
    for r in res.records:
        if not table1_style(r):
            continue
        f = freeze.get((r["task"], seed_key(r)))
        if f is None:
            lacking += 1
            continue
        compared += 1
        score = r.get("score")
        if not (finite(score) and score >= f):
            below.append((r, f))
    return below, compared, lacking


def _method_dim(r: Record) -> str:
    return f"{r['method']} (dim {r.get('dim')})"


def section_below_freeze(res: Results) -> Section | None:
    runs = [r for r in res.records if table1_style(r)]
    if not runs:
        return None
    below, compared, lacking = below_freeze(res)
    body = [
        _below_line(len(below), compared, lacking),
        md_table(
            ["run", "runs", "below freeze", "mean ± std", "median", "mean − median"],
            _summary_rows(runs, below),
        ),
        "Mean ± std and median over the seeds and tasks of each run kind (scores ×100; n = "
        "runs): a mean well under the median says a few runs pulled it down.",
    ]
    if below:
        listed = [_below_row(r, f) for r, f in below[:MAX_LISTED]]
        body.append(md_table(["id", "task", "seed", "score", "freeze", "score − freeze"], listed))
        if len(below) > MAX_LISTED:
            body.append(f"… and {len(below) - MAX_LISTED} more.")
    return Section(T_BELOW, body)


def _below_row(r: Record, freeze: float) -> list[str]:
    score = as_float(r.get("score"))
    gap = fmt_pts(100 * (score - freeze), True) if score is not None else DASH
    return [str(r.get("id", DASH)), r["task"], seed_key(r), fmt_pct(score), fmt_pct(freeze), gap]


def _below_line(n_below: int, compared: int, lacking: int) -> str:
    which = "Table-1-style runs"
    if compared == 0:
        text = f"No {which} have a freeze run of the same task and seed to compare with yet."
    elif n_below == 0:
        text = (
            f"None of the {compared} {which} ends below the mean freeze score of its task and "
            "seed: no run made the encoder worse than leaving it frozen."
        )
    else:
        text = (
            f"{n_below} of {compared} {which} ({n_below / compared:.0%}) end below the mean "
            "freeze score of their task and seed: the encoder ended worse than frozen (a score "
            "that is not a number counts as below)."
        )
    if lacking:
        text += f" {lacking} {'run has' if lacking == 1 else 'runs have'} no freeze run to "
        text += "compare with."
    return (
        f"{text} Table-1-style: phases {', '.join(TABLE1_PHASES)}; methods "
        f"{', '.join(TABLE1_METHODS)}; freeze: method freeze, variant '-', mean over its runs."
    )


def _summary_rows(runs: Sequence[Record], below: Sequence[tuple[Record, float]]) -> list[list]:
    flagged = {id(r) for r, _ in below}
    groups: dict[str, list[Record]] = {}
    for r in runs:
        groups.setdefault(_method_dim(r), []).append(r)
    rows = []
    for label, recs in sorted(groups.items()):
        s = stat(r.get("score") for r in recs)
        med = statistics.median(s.values) if s else None
        rows.append(
            [
                label,
                str(len(recs)),
                str(sum(id(r) in flagged for r in recs)),
                fmt(s),
                fmt_pct(med),
                fmt_pts(100 * (s.mean - med), True) if s else DASH,
            ]
        )
    return rows
