"""Figure 2 of the paper: how much a basis from one task loses on another (transferred bases).

The paper's Figure 2 is an image, so there are no numbers beside ours; finding F2 checks its
claim that a transferred basis beats a random one on the same target.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable

from experiments import figures
from experiments.report.columns import figure_line
from experiments.report.hints import join_hints, losses_hint, still_hint
from experiments.report.markdown import Section, fmt_pts, md_table
from experiments.report.results import Results
from experiments.report.selectors import intrinsic_at, is_full, random_at, transfer_from
from experiments.report.stats import Finding, verdict

FIG2 = "fig2_transfer.png"


def transfer_matrix(res: Results) -> tuple[list[str], list[list[float | None]]]:
    """Rows (source bases, then 'random') and drops full(target) - score in points; the
    diagonal is the task's own basis (intrinsic)."""
    dim, full = res.cfg["dim"], res.per_task(is_full)
    rows = [*res.tasks, "random"]
    matrix = []
    for source in rows:
        line: list[float | None] = []
        for target in res.tasks:
            if source == "random":
                sel = random_at(dim)
            elif source == target:
                sel = intrinsic_at(dim)
            else:
                sel = transfer_from(source, dim)
            s = res.stat(target, sel)
            ok = s is not None and target in full
            line.append(100 * (full[target].mean - s.mean) if ok else None)
        matrix.append(line)
    return rows, matrix


def section_fig2(res: Results, draw: bool) -> Section:
    rows, matrix = transfer_matrix(res)
    table = [
        [
            src,
            *(
                fmt_pts(v) + (" (own)" if src == tgt and v is not None else "")
                for v, tgt in zip(line, res.tasks, strict=True)
            ),
            fmt_pts(_mean_or_none(v for v in line if v is not None)),
        ]
        for src, line in zip(rows, matrix, strict=True)
    ]
    body = [
        f"Drop = mean(full of the target) − mean(score in the source's basis), points, dim "
        f"{res.cfg['dim']}; lower is better. Diagonal (own): the task's own basis (Table 1's "
        "intrinsic); last row: the random basis. Avg.: mean of the row's cells (the paper's "
        "last column). The paper's Figure 2 is an image (numbers not in the stored text).",
        md_table(["source \\ target", *res.tasks, "Avg."], table),
    ]
    body.append(
        figure_line(
            res,
            draw,
            FIG2,
            "Figure 2",
            any(v is not None for line in matrix for v in line),
            lambda p: figures.transfer_heatmap(matrix, rows, res.tasks, p),
        )
    )
    return Section("Figure 2: transferred bases", body, [_f2(res)])


def _mean_or_none(values: Iterable[float]) -> float | None:
    values = list(values)
    return statistics.fmean(values) if values else None


def transfer_wins(res: Results) -> dict[tuple[str, str], float]:
    """(source, target) -> transfer − random score in points, for off-diagonal cells."""
    dim, out = res.cfg["dim"], {}
    for target in res.tasks:
        rnd = res.stat(target, random_at(dim))
        for source in res.tasks:
            s = res.stat(target, transfer_from(source, dim)) if source != target else None
            if s is not None and rnd is not None:
                out[(source, target)] = 100 * (s.mean - rnd.mean)
    return out


def _f2(res: Results) -> Finding:
    wins = transfer_wins(res)
    share = sum(v > 0 for v in wins.values()) / len(wins) if wins else None
    f = Finding(
        "F2",
        "transferred bases beat random",
        "share of off-diagonal cells where transfer > random for that target ≥ 75% → holds; "
        "≥ 50% → partly",
        verdict(share, 0.75, 0.5),
        measured=f"{sum(v > 0 for v in wins.values())} of {len(wins)} cells"
        + (f" ({share:.0%})" if share is not None else ""),
        paper="transferred subspaces outperform the random baseline (Figure 2)",
    )
    if share is None:
        f.reason = "needs transfer and random runs at the same dim"
        return f
    worse = {f"{s}→{t}": v for (s, t), v in wins.items() if v <= 0}
    f.reason = join_hints(
        losses_hint(worse, "transfer below random"),
        still_hint(res, {t for _, t in wins}),
    )
    return f
