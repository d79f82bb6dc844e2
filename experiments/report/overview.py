"""The report's first and last sections: the setup that was run, and the wall-clock it took.

Why together: both describe the experiment folder rather than a finding (settings, tasks and
their sizes, the command; the time per phase and per method), from config.json, phases.json and
the runs' own timings.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from experiments import paper_numbers as paper
from experiments.config import PHASES
from experiments.ledger import RUNS_FILE
from experiments.report.columns import H, median_of
from experiments.report.markdown import DASH, Section, md_table
from experiments.report.results import Record, Results
from experiments.report.stats import finite


def section_setup(res: Results) -> Section:
    cfg = res.cfg
    rows = []
    for t in res.tasks:
        recs = res.select(lambda r: True, t)
        metric = next((r["metric"] for r in recs if r.get("metric")), DASH)
        rows.append(
            [
                t,
                paper.ANALOG.get(t, DASH),
                metric,
                _sizes(recs, "train_size"),
                _sizes(recs, "dev_size"),
            ]
        )
    wall = _total_wall(res)
    lines = [
        f"- model: `{cfg['model']}` (preset `{cfg['preset']}`), {cfg.get('layers') or DASH} "
        "encoder layers",
        f"- steps {cfg['steps']}, batch {cfg['batch_size']}, lr {cfg['lr']}, "
        f"theta lr {cfg['theta_lr']} (theta in the trajectory's units; random/fastfood "
        f"{cfg.get('plain_theta_lr', cfg['theta_lr'])}), "
        f"head lr {cfg.get('head_lr') or cfg['lr']}, "
        f"max length {cfg['max_length']}, h = {H} ensemble vectors",
        f"- trajectory: t = {cfg['rows']} rows after θ0, one every N = {cfg['record_every']} steps",
        f"- dims: Table 1 / Figure 2 {cfg['dim']}, ablation {cfg['ablation_dims']}, unified "
        f"{cfg['unified_dim']}, zero-shot {cfg['zeroshot_dim']}, equal-budget layer dim "
        f"{cfg['equal_layer_dim']}, modes {cfg['modes_dim']}; outliers at {cfg['sigma']} σ",
        f"- d90: methods {cfg['d90_methods']}, seeds {cfg['d90_seeds']}, target "
        f"{cfg['d90_fraction']:.0%} of full",
        f"- seeds {cfg['seeds']}; dev fraction {cfg.get('dev_fraction', DASH)}; "
        f"{len(res.records)} finished runs in {RUNS_FILE}",
        f"- wall-clock total: {DASH if wall is None else f'{wall / 60:.1f} min'}",
    ]
    command = cfg.get("command")
    body = [
        md_table(["task", "GLUE analog", "metric", "train", "dev"], rows),
        "\n".join(lines),
        f"Command:\n\n```\n{command}\n```" if command else "Command: not recorded.",
    ]
    if res.notes:
        body.append("Notes:\n\n" + "\n".join(f"- {n}" for n in res.notes))
    return Section("Setup", body)


def _sizes(recs: Sequence[Record], key: str) -> str:
    values = sorted({r[key] for r in recs if finite(r.get(key))})
    return " / ".join(str(v) for v in values) if values else DASH


def _total_wall(res: Results) -> float | None:
    walls = [p.get("wall_seconds") for p in res.phases.values() if isinstance(p, dict)]
    walls = [w for w in walls if finite(w)]
    return sum(walls) if walls else None


def section_time(res: Results) -> Section:
    rows = []
    for phase in [*PHASES, *sorted(set(res.phases) - set(PHASES))]:
        p = res.phases.get(phase)
        if not isinstance(p, dict):
            rows.append([phase, DASH, DASH, DASH])
            continue
        rows.append(
            [
                phase,
                _minutes(p.get("wall_seconds")),
                str(p.get("runs", DASH)),
                _minutes(p.get("run_seconds")),
            ]
        )
    total = _total_wall(res)
    runs = sum(p.get("runs", 0) for p in res.phases.values() if isinstance(p, dict))
    run_s = [p.get("run_seconds") for p in res.phases.values() if isinstance(p, dict)]
    rows.append(
        [
            "total",
            _minutes(total),
            str(runs),
            _minutes(sum(x for x in run_s if finite(x)) if run_s else None),
        ]
    )
    body = [
        "Wall-clock per phase (run time is summed over runs; parallel workers make it exceed "
        "the wall-clock).",
        md_table(["phase", "wall (min)", "runs", "run time (min)"], rows),
        md_table(["method", "runs", "median s/step", "median s/run"], _per_method(res)),
    ]
    return Section("Wall-clock", body)


def _minutes(seconds: Any) -> str:
    return f"{seconds / 60:.1f}" if finite(seconds) else DASH


def _per_method(res: Results) -> list[list[str]]:
    groups: dict[str, list[Record]] = {}
    for r in res.records:
        label = r["method"] + ("+said" if r.get("said") else "")
        groups.setdefault(label, []).append(r)
    rows = []
    for label, recs in sorted(groups.items()):
        sps, sec = median_of(recs, "seconds_per_step"), median_of(recs, "seconds")
        rows.append(
            [
                label,
                str(len(recs)),
                DASH if sps is None else f"{sps:.3f}",
                DASH if sec is None else f"{sec:.1f}",
            ]
        )
    return rows
