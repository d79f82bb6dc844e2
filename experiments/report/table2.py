"""Table 2 of the paper: a unified basis from every task, and a zero-shot one without the target.

Findings T2a (unified ≈ full), T2b (zero-shot beats random) and T2c (zero-shot below unified).
"""

from __future__ import annotations

from experiments import paper_numbers as paper
from experiments.report.columns import (
    PAPER_COLUMNS_NOTE,
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
from experiments.report.markdown import Section, fmt_pts, md_table
from experiments.report.results import Results
from experiments.report.selectors import is_full, method_at, random_at
from experiments.report.stats import Finding, Stat, mean_gap, share_above, verdict


def table2_stats(res: Results) -> dict[str, dict[str, Stat]]:
    cfg = res.cfg
    return {
        "full": res.per_task(is_full),
        "random": res.per_task(random_at(cfg["dim"])),
        "zeroshot": res.per_task(method_at("zeroshot", cfg["zeroshot_dim"])),
        "unified": res.per_task(method_at("unified", cfg["unified_dim"])),
    }


def section_table2(res: Results) -> Section:
    cfg, stats = res.cfg, table2_stats(res)
    labels = {
        "full": "full",
        "random": f"random (dim {cfg['dim']})",
        "zeroshot": f"zeroshot (dim {cfg['zeroshot_dim']})",
        "unified": f"unified (dim {cfg['unified_dim']})",
    }
    rows = our_rows(res, {labels[m]: s for m, s in stats.items()})
    d = paper.TABLE2_DIMS
    paper_part = paper_rows(
        res, {f"{model}-{m}": paper.TABLE2[model][m] for model in paper.TABLE2 for m in labels}
    )
    body = [
        f"Unified basis: {cfg['unified_per_task']} checkpoint(s) per task from every task's "
        "trajectory; zero-shot: the same without the target task. Paper dims: random "
        f"{d['random']}, zeroshot {d['zeroshot']}, unified {d['unified']}.",
        md_table(["method", *map(task_label, res.tasks), "Avg."], rows + paper_part),
        PAPER_COLUMNS_NOTE,
        f"Random is compared at dim {cfg['dim']}, zero-shot at dim {cfg['zeroshot_dim']}: a "
        "random basis of lower dim is not better than one of higher dim, so 'zeroshot beats "
        "random' is a conservative test here.",
    ]
    findings = [_t2a(res, stats), _t2b(res, stats), _t2c(res, stats)]
    return Section("Table 2: unified and zero-shot bases", body, findings)


def _t2a(res: Results, s: dict) -> Finding:
    gap = mean_gap(s["full"], s["unified"])
    f = Finding(
        "T2a",
        "unified ≈ full",
        "mean over tasks of (full − unified) ≤ 2 points → holds; ≤ 5 → partly",
        verdict(gap, 2, 5, lower_is_better=True),
        measured=f"mean full − unified = {fmt_pts(gap)} points",
        paper=f"BERT {paper_gap(paper.TABLE2, 'BERT', 'full', 'unified'):.1f}, RoBERTa "
        f"{paper_gap(paper.TABLE2, 'RoBERTa', 'full', 'unified'):.1f} points",
    )
    f.reason = (
        join_hints(
            f"per task: {per_task_list(gaps_by_task(s['full'], s['unified']))} points",
            f"the unified basis has dim {res.cfg['unified_dim']} against Table 1's {res.cfg['dim']}"
            if res.cfg["unified_dim"] < res.cfg["dim"]
            else "",
            noise_hint(gap, s["full"], s["unified"]),
        )
        if gap is not None
        else "needs full and unified runs"
    )
    return f


def _share_finding(
    res: Results, key: str, claim: str, a: dict, b: dict, paper_text: str
) -> Finding:
    share, gaps = share_above(a, b), gaps_by_task(a, b)
    f = Finding(
        key,
        claim,
        "on all tasks → holds; on at least half → partly",
        verdict(share, 1.0, 0.5),
        measured=f"{sum(g > 0 for g in gaps.values())} of {len(gaps)} tasks, mean margin "
        f"{fmt_pts(mean_gap(a, b), True)} points",
        paper=paper_text,
    )
    losing = {t: g for t, g in gaps.items() if g <= 0}
    f.reason = (
        join_hints(
            losses_hint(losing, "fails"),
            still_hint(res, losing),
            noise_hint(mean_gap(a, b), a, b),
        )
        if share is not None
        else "the runs it compares are not in runs.jsonl yet"
    )
    return f


def _t2b(res: Results, s: dict) -> Finding:
    text = (
        f"BERT {paper_count(paper.TABLE2, 'BERT', 'zeroshot', 'random')}, RoBERTa "
        f"{paper_count(paper.TABLE2, 'RoBERTa', 'zeroshot', 'random')} tasks"
    )
    return _share_finding(res, "T2b", "zeroshot beats random", s["zeroshot"], s["random"], text)


def _t2c(res: Results, s: dict) -> Finding:
    text = (
        f"BERT {paper_count(paper.TABLE2, 'BERT', 'unified', 'zeroshot')}, RoBERTa "
        f"{paper_count(paper.TABLE2, 'RoBERTa', 'unified', 'zeroshot')} tasks"
    )
    return _share_finding(res, "T2c", "zeroshot below unified", s["unified"], s["zeroshot"], text)
