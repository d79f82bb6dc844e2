"""Where the outliers sit (DIR/outliers.json): per component, against θ0, across tasks.

Why: a collapse when the outliers are zeroed means something only if they are not just
LayerNorm gains or θ0's own largest entries; these tables show that against random baselines.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from experiments.report.diagnostics.cells import (
    as_dict,
    dicts_in,
    fmt_count,
    fmt_g,
    fmt_pct,
    mean_of,
    ordered_tasks,
)
from experiments.report.markdown import DASH, fmt, md_table
from experiments.report.results import Results
from experiments.report.stats import stat


def _runs(data: Mapping) -> list[tuple[str, str, dict]]:
    """(task, seed, entry) of outliers.json's 'runs'."""
    return [
        (str(t), str(s), as_dict(e))
        for t, seeds in as_dict(data.get("runs")).items()
        for s, e in as_dict(seeds).items()
    ]


def where_parts(res: Results, data: Mapping) -> list[str]:
    """The tables of outliers.json that exist: per component, against θ0, across tasks."""
    runs = _runs(data)
    parts = [_enrichment_table(runs), _overlap_table(res, runs), _jaccard_table(data)]
    return [p for p in parts if p]


def _enrichment_table(runs: Sequence[tuple[str, str, dict]]) -> str:
    comps: dict[str, dict[str, list]] = {}
    for _, _, e in runs:
        for row in dicts_in(e.get("enrichment")):
            cell = comps.setdefault(str(row.get("component")), {})
            for key in ("count", "expected", "fraction", "share", "enrichment", "z"):
                cell.setdefault(key, []).append(row.get(key))
    if not comps:
        return ""
    rows = [
        [
            comp,
            fmt_pct(mean_of(c["share"]), 2),
            fmt(stat(c["fraction"]), digits=2),
            f"{mean_of(c['count']) or 0:,.0f} / {mean_of(c['expected']) or 0:,.0f}",
            fmt_g(stat(c["enrichment"])),
            fmt_g(stat(c["z"])),
        ]
        for comp, c in comps.items()
    ]
    header = ["component", "% of params", "% of outliers", "count / expected", "enrichment", "z"]
    return (
        f"Where the outliers sit, per component (mean ± std over {len(runs)} runs, tasks × "
        "seeds). Enrichment: share of the outliers / share of the parameters (1: as if "
        "uniform); z: binomial z-score against that uniform null.\n\n" + md_table(header, rows)
    )


def _overlap_table(res: Results, runs: Sequence[tuple[str, str, dict]]) -> str:
    rows = []
    for t in ordered_tasks(res, {t for t, _, _ in runs}):
        es = [e for tt, _, e in runs if tt == t]
        top = [as_dict(e.get("theta0_top_overlap")) for e in es]
        rows.append(
            [
                t,
                str(len(es)),
                fmt_count(stat(e.get("count") for e in es)),
                fmt(stat(e.get("fraction") for e in es), digits=2),
                fmt(stat(x.get("fraction") for x in top)),
                fmt_pct(mean_of(x.get("expected") for x in top), 2),
                fmt(stat(e.get("ln_gain_share") for e in es)),
                fmt_pct(mean_of(e.get("ln_gain_param_share") for e in es), 2),
            ]
        )
    if not rows:
        return ""
    header = ["task", "runs", "outliers", "% of encoder", "% among θ0's largest", "expected %"]
    header += ["% LayerNorm gains", "LayerNorm gains' % of params"]
    return (
        "Do the outliers just track θ0? '% among θ0's largest': the share of a layer's m "
        "outliers that are among its m entries of largest |θ0|, against a random set's "
        "expectation; LayerNorm gains: their share of the outliers against their share of the "
        "parameters. Mean ± std over seeds.\n\n" + md_table(header, rows)
    )


def _jaccard_table(data: Mapping) -> str:
    pairs: dict[tuple[str, str], list[dict]] = {}
    for row in dicts_in(data.get("cross_task")):
        pairs.setdefault((str(row.get("a")), str(row.get("b"))), []).append(row)
    rows = []
    for (a, b), rs in sorted(pairs.items()):
        j, e = stat(r.get("jaccard") for r in rs), mean_of(r.get("expected_jaccard") for r in rs)
        ratio = f"{j.mean / e:.3g}×" if j and e else DASH
        rows.append(
            [a, b, fmt_g(j), str(j.n if j else 0), DASH if e is None else f"{e:.3g}", ratio]
        )
    if not rows:
        return ""
    return (
        "Do two tasks find the same positions? Jaccard index of their outlier sets (mean ± std "
        "over seeds) against two random sets of the same sizes.\n\n"
        + md_table(["task a", "task b", "Jaccard", "seeds", "expected (random)", "ratio"], rows)
    )
