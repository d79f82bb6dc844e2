"""Table 1 of the paper: full, freeze, random and intrinsic subspace fine-tuning at one dim.

Its findings T1a (intrinsic ≈ full), T1b (intrinsic beats random) and T1c (freeze well below
full) carry the paper's main claim, so the report's headline is built from them too.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from experiments import paper_numbers as paper
from experiments.config import PaperConfig
from experiments.report.columns import (
    PAPER_COLUMNS_NOTE,
    H,
    median_of,
    our_rows,
    paper_count,
    paper_gap,
    paper_rows,
    task_label,
)
from experiments.report.hints import (
    gaps_by_task,
    join_hints,
    losses_hint,
    noise_hint,
    per_task_list,
    still_hint,
)
from experiments.report.markdown import DASH, Section, fmt_int, fmt_pts, md_table
from experiments.report.results import Record, Results, Selector, config_with_defaults
from experiments.report.selectors import intrinsic_at, is_freeze, is_full, random_at
from experiments.report.stats import Finding, Stat, average, mean_gap, share_above, verdict

T1_METHODS = ("full", "freeze", "random", "intrinsic")


def table1_selectors(cfg: Mapping[str, Any]) -> dict[str, Selector]:
    dim = cfg["dim"]
    return {
        "full": is_full,
        "freeze": is_freeze,
        "random": random_at(dim),
        "intrinsic": intrinsic_at(dim),
    }


def table1_stats(res: Results) -> dict[str, dict[str, Stat]]:
    return {m: res.per_task(sel) for m, sel in table1_selectors(res.cfg).items()}


def table1_averages(
    records: Sequence[Record], cfg: Mapping[str, Any] | PaperConfig
) -> dict[str, float]:
    """Table 1's Avg. column: method -> mean over tasks of the per-task seed means (points,
    x100). Methods without any run are left out."""
    res = Results(list(records), config_with_defaults(cfg, records))
    avgs = {m: average(stats) for m, stats in table1_stats(res).items()}
    return {m: v for m, v in avgs.items() if v is not None}


def section_table1(res: Results) -> Section:
    stats = table1_stats(res)
    dim = res.cfg["dim"]
    rows = our_rows(res, stats)
    for row, (m, sel) in zip(rows, table1_selectors(res.cfg).items(), strict=True):
        row.append(_params_cell(res, m, sel))
    paper_part = paper_rows(
        res, {f"{model}-{m}": paper.TABLE1[model][m] for model in paper.TABLE1 for m in T1_METHODS}
    )
    header = ["method", *map(task_label, res.tasks), "Avg.", "θ params"]
    body = [
        f"Full fine-tuning, frozen encoder, and subspace fine-tuning of the encoder at dim {dim} "
        "per layer in a random basis and in the task's own trajectory basis (delta mode).",
        md_table(header, rows + [[*r, ""] for r in paper_part]),
        PAPER_COLUMNS_NOTE,
        f"θ params: free subspace parameters, dim × layers (the h = {H} ensemble vectors count "
        "once: the model sees only their mean); the subspace dimension is dim per layer. "
        "Embeddings and head train in the full space in every method; full trains everything.",
    ]
    return Section(f"Table 1: intrinsic subspace fine-tuning (dim {dim})", body, t1_findings(res))


def _params_cell(res: Results, method: str, sel: Selector) -> str:
    recs = res.select(sel)
    if method == "full":
        return fmt_int(median_of(recs, "full_space_params")) + " (all)" if recs else DASH
    return fmt_int(median_of(recs, "free_params")) if recs else DASH


def t1_findings(res: Results) -> list[Finding]:
    s = table1_stats(res)
    return [
        _t1a(res, s["full"], s["intrinsic"], s["freeze"]),
        _t1b(res, s["intrinsic"], s["random"]),
        _t1c(res, s["full"], s["freeze"]),
    ]


def _t1a(res: Results, full: dict, intrinsic: dict, freeze: dict) -> Finding:
    gap = mean_gap(full, intrinsic)
    f = Finding(
        "T1a",
        "intrinsic ≈ full",
        "mean over tasks of (full − intrinsic) ≤ 2 points → holds; ≤ 5 → partly; else does not",
        verdict(gap, 2, 5, lower_is_better=True),
        measured=f"mean full − intrinsic = {fmt_pts(gap)} points over "
        f"{len(gaps_by_task(full, intrinsic))} tasks",
        paper=f"BERT {paper_gap(paper.TABLE1, 'BERT', 'full', 'intrinsic'):.1f}, "
        f"RoBERTa {paper_gap(paper.TABLE1, 'RoBERTa', 'full', 'intrinsic'):.1f} points",
    )
    if gap is None:
        f.reason = f"needs full and intrinsic (dim {res.cfg['dim']}) runs of the same task"
        return f
    gaps = gaps_by_task(full, intrinsic)
    f.reason = join_hints(
        f"per task: {per_task_list(gaps)} points",
        _recovered(full, intrinsic, freeze),
        still_hint(res, gaps),
        noise_hint(gap, full, intrinsic),
    )
    return f


def _recovered(full: dict, sub: dict, freeze: dict) -> str:
    """How much of the full − freeze gap the subspace closes (when there is a gap to close)."""
    common = [t for t in full if t in sub and t in freeze]
    if not common:
        return ""
    span = statistics.fmean(100 * (full[t].mean - freeze[t].mean) for t in common)
    got = statistics.fmean(100 * (sub[t].mean - freeze[t].mean) for t in common)
    if span < 2.0:
        return ""
    if got < 0:
        return f"the subspace scores below freeze by {fmt_pts(-got)} points on average"
    return (
        f"the subspace closes {100 * got / span:.0f}% of the {fmt_pts(span)}-point "
        "full − freeze gap"
    )


def _t1b(res: Results, intrinsic: dict, random: dict) -> Finding:
    share = share_above(intrinsic, random)
    gaps = gaps_by_task(intrinsic, random)
    f = Finding(
        "T1b",
        "intrinsic beats random",
        "intrinsic > random (same dim) on all tasks → holds; on at least half → partly",
        verdict(share, 1.0, 0.5),
        measured=f"intrinsic > random on {sum(g > 0 for g in gaps.values())} of {len(gaps)} "
        f"tasks, mean gap {fmt_pts(mean_gap(intrinsic, random), True)} points",
        paper=f"BERT {paper_count(paper.TABLE1, 'BERT', 'intrinsic', 'random')}, RoBERTa "
        f"{paper_count(paper.TABLE1, 'RoBERTa', 'intrinsic', 'random')} tasks",
    )
    if share is None:
        f.reason = "needs intrinsic and random runs at the same dim"
        return f
    losing = {t: g for t, g in gaps.items() if g <= 0}
    f.reason = join_hints(
        losses_hint(losing, "random above intrinsic"),
        still_hint(res, losing),
        noise_hint(mean_gap(intrinsic, random), intrinsic, random),
    )
    return f


def _t1c(res: Results, full: dict, freeze: dict) -> Finding:
    gap = mean_gap(full, freeze)
    f = Finding(
        "T1c",
        "freeze well below full",
        "mean over tasks of (full − freeze) ≥ 5 points → holds; else does not hold",
        verdict(gap, 5),
        measured=f"mean full − freeze = {fmt_pts(gap)} points",
        paper=f"BERT {paper_gap(paper.TABLE1, 'BERT', 'full', 'freeze'):.1f}, "
        f"RoBERTa {paper_gap(paper.TABLE1, 'RoBERTa', 'full', 'freeze'):.1f} points",
    )
    f.reason = (
        join_hints(still_hint(res, bar=5.0), noise_hint(gap, full, freeze))
        if gap is not None
        else "needs full and freeze runs of the same task"
    )
    return f
