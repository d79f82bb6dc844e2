"""Table 3 of the paper: full fine-tuning with the outlier weights held at zero, against as
many random weights.

Only the table: its verdict T3 (both protocols, with the controls that tell what the collapse
is made of) is in the diagnostics' "Outliers, with controls" section.
"""

from __future__ import annotations

from experiments import paper_numbers as paper
from experiments.report.columns import PAPER_COLUMNS_NOTE, our_rows, paper_rows, task_label
from experiments.report.markdown import DASH, Section, md_table
from experiments.report.results import Results
from experiments.report.selectors import disabled, is_full
from experiments.report.stats import finite, stat


def encoder_size(res: Results) -> int | None:
    """Encoder parameters, from any subspace run's outlier summary (count / fraction)."""
    for r in res.records:
        o = r.get("outliers") or {}
        count, frac = o.get("total_count"), o.get("total_fraction")
        if finite(count) and finite(frac) and frac > 0:
            return int(round(count / frac))
    return None


def section_table3(res: Results) -> Section:
    stats = {
        "full": res.per_task(is_full),
        "zeroed: as many random weights": res.per_task(disabled("random")),
        "zeroed: the outlier weights": res.per_task(disabled("outlier")),
    }
    rows = our_rows(res, stats)
    rows.append(["weights held at zero", *(_held_cell(res, t) for t in res.tasks), ""])
    paper_part = paper_rows(
        res,
        {
            f"{model}-{label}": paper.TABLE3[model][key]
            for model in paper.TABLE3
            for key, label in (("full", "Full"), ("random", "Random"), ("outlier", "Outlier"))
        },
    )
    body = [
        f"Full fine-tuning with the {res.cfg['sigma']}σ outlier weights of the intrinsic run "
        f"under the paper's protocol (raw checkpoints, plain V θ at lr "
        f"{res.cfg.get('paper_theta_lr', 0.01)}, dim {res.cfg['dim']}, same task and seed) held "
        "at zero, and with as many random "
        f"weights held at zero. The paper zeroes about {paper.OUTLIER_FRACTION:.1%} of encoder "
        "parameters.",
        md_table(["run", *map(task_label, res.tasks), "Avg."], rows + paper_part),
        PAPER_COLUMNS_NOTE,
    ]
    # Its verdict (T3, both protocols with their controls) is in "Outliers, with controls".
    return Section("Table 3: disabling outlier dimensions", body, [])


def _held_cell(res: Results, task: str) -> str:
    held = stat(r.get("held_zero") for r in res.select(disabled("outlier"), task))
    if held is None:
        return DASH
    size = encoder_size(res)
    share = f" ({held.mean / size:.2%})" if size else ""
    return f"{held.mean:,.0f}{share}"
