"""Tables 5/6 of the paper: the intrinsic score against the subspace dim.

Finding T5: the score grows with dim (the paper's BERT Table 5 beside ours).
"""

from __future__ import annotations

import statistics

from experiments import figures
from experiments import paper_numbers as paper
from experiments.report.columns import figure_line
from experiments.report.hints import join_hints, noise_hint, still_hint
from experiments.report.markdown import Section, avg_cell, fmt_pts, md_table
from experiments.report.results import Results
from experiments.report.selectors import intrinsic_at, random_at
from experiments.report.stats import Finding, Stat, mean_gap, verdict

FIG_DIMS = "fig_dims.png"


def ablation_stats(res: Results) -> dict[int, dict[str, Stat]]:
    return {d: res.per_task(intrinsic_at(d)) for d in res.cfg["ablation_dims"]}


def section_ablation(res: Results, draw: bool) -> Section:
    stats = ablation_stats(res)
    dims = list(stats)
    pdims = sorted(next(iter(paper.TABLE5_BERT.values())))
    rows = []
    for t in res.tasks:
        row = paper.TABLE5_BERT.get(paper.ANALOG.get(t, ""))
        theirs = [f"{row[d]:.2f}" for d in pdims] if row else [f"{_t5_mean(d):.2f}*" for d in pdims]
        rows.append([t, *(res.fmt(stats[d].get(t)) for d in dims), *theirs])
    avg_row = ["Avg.", *(avg_cell(stats[d], res.tasks) for d in dims)]
    rows.append(avg_row + [f"{_t5_mean(d):.2f}*" for d in pdims])
    header = ["task", *(f"dim {d}" for d in dims), *(f"paper BERT dim {d}" for d in pdims)]
    curves = {
        t: {d: (100 * s[t].mean, 100 * (s[t].std or 0.0)) for d, s in stats.items() if t in s}
        for t in res.tasks
    }
    curves = {t: c for t, c in curves.items() if c}
    randoms = {
        t: (res.cfg["dim"], 100 * s.mean)
        for t, s in res.per_task(random_at(res.cfg["dim"])).items()
    }
    body = [
        "Intrinsic subspace fine-tuning (delta basis) at each ablation dim. Paper columns: "
        "Table 5 (BERT) for the task's GLUE analog; `*`: mean of the paper's eight tasks "
        "(trec6, and the average row).",
        md_table(header, rows),
        figure_line(
            res,
            draw,
            FIG_DIMS,
            "Score against dim",
            bool(curves),
            lambda p: figures.dims_plot(curves, randoms, p, "Intrinsic score against dim"),
        ),
    ]
    return Section("Tables 5/6: score against dim", body, [_t5(res, stats)])


def _t5_mean(d: int) -> float:
    return statistics.fmean(row[d] for row in paper.TABLE5_BERT.values())


def _t5(res: Results, stats: dict[int, dict[str, Stat]]) -> Finding:
    dims = [d for d in sorted(stats) if stats[d]]
    common = [t for t in res.tasks if all(t in stats[d] for d in dims)]
    means = {d: statistics.fmean(100 * stats[d][t].mean for t in common) for d in dims}
    if len(dims) < 2 or not common:
        score = None
    else:
        seq = [means[d] for d in dims]
        rising = all(b > a for a, b in zip(seq, seq[1:], strict=False))
        score = 2.0 if rising else (1.0 if seq[-1] > seq[0] else 0.0)
    text = ", ".join(f"dim {d}: {fmt_pts(m)}" for d, m in means.items())
    f = Finding(
        "T5",
        "score grows with dim",
        "mean over tasks rises at every step of the ablation dims → holds; the largest dim "
        "beats the smallest → partly; else does not hold",
        verdict(score, 2, 1),
        measured=f"means over {len(common)} tasks: {text}" if score is not None else "",
        paper="BERT mean " + ", ".join(f"dim {d}: {_t5_mean(d):.1f}" for d in (8, 16, 32)),
    )
    if score is None:
        f.reason = "needs intrinsic runs at two or more ablation dims on the same tasks"
        return f
    lo, hi = stats[dims[0]], stats[dims[-1]]
    f.reason = join_hints(noise_hint(mean_gap(hi, lo), hi, lo), still_hint(res, common, bar=2.0))
    return f
