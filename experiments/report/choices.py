"""Three choices the paper leaves open or these runs make differently, each run both ways.

Global vs layer-wise basis (the paper's Limitations ask whether a global subspace exists),
which trajectory rows the SVD sees (raw / delta / centered), and the θ learning rate (the
paper's plain V θ rule beside the scaled one these runs use). They state an outcome, not a
verdict: the paper makes no claim about them.
"""

from __future__ import annotations

from experiments.report.columns import median_of
from experiments.report.hints import gaps_by_task, noise_hint
from experiments.report.markdown import Section, avg_cell, fmt_int, fmt_pts, md_table
from experiments.report.results import Results
from experiments.report.selectors import (
    MODES,
    intrinsic_at,
    intrinsic_lr,
    is_freeze,
    is_full,
    method_at,
)
from experiments.report.stats import average, mean_gap


def section_scope(res: Results) -> Section:
    cfg = res.cfg
    e, layers = cfg["equal_layer_dim"], cfg.get("layers")
    gdim = e * layers if layers else None
    columns = {
        f"global (dim {gdim or '?'})": lambda r: (
            method_at("global", gdim)(r) and r.get("scope", "global") == "global"
        ),
        f"layer-wise (dim {e} per layer)": intrinsic_at(e),
        f"layer-wise (dim {cfg['dim']} per layer)": intrinsic_at(cfg["dim"]),
    }
    stats = {label: res.per_task(sel) for label, sel in columns.items()}
    params = [fmt_int(median_of(res.select(sel), "free_params")) for sel in columns.values()]
    rows = [[t, *(res.fmt(s.get(t)) for s in stats.values())] for t in res.tasks]
    rows.append(["Avg.", *(avg_cell(s, res.tasks) for s in stats.values())])
    rows.append(["θ params", *params])
    glob, layer = list(stats.values())[:2]
    body = [
        "Not in the paper (its Limitations ask whether a global subspace exists): one θ for "
        "the whole encoder from a whole-encoder trajectory basis, against layer-wise bases at "
        "the same number of free parameters.",
        md_table(["task", *columns], rows),
        _winner_line(glob, layer, "global", "layer-wise", "at equal free parameters"),
    ]
    return Section("Global vs layer-wise basis (new)", body)


def _winner_line(a: dict, b: dict, name_a: str, name_b: str, what: str) -> str:
    gap = mean_gap(a, b)
    if gap is None:
        return f"Outcome: not run yet ({name_a} and {name_b} runs of the same task needed)."
    wins = sum(g > 0 for g in gaps_by_task(a, b).values())
    n = len(gaps_by_task(a, b))
    lead, lag = (name_a, name_b) if gap > 0 else (name_b, name_a)
    noise = noise_hint(gap, a, b)
    return (
        f"Outcome: {lead} beats {lag} {what} by {fmt_pts(abs(gap))} points on average "
        f"({name_a} higher on {wins} of {n} tasks)" + (f"; {noise}." if noise else ".")
    )


def section_modes(res: Results) -> Section:
    dim = res.cfg["modes_dim"]
    stats = {m: res.per_task(intrinsic_at(dim, m)) for m in MODES}
    rows = [[t, *(res.fmt(stats[m].get(t)) for m in MODES)] for t in res.tasks]
    rows.append(["Avg.", *(avg_cell(stats[m], res.tasks) for m in MODES)])
    avgs = {m: average(s) for m, s in stats.items() if s}
    if len(avgs) >= 2:
        best = sorted(avgs, key=avgs.get, reverse=True)
        outcome = (
            f"Outcome: {best[0]} has the best average ({fmt_pts(avgs[best[0]])}), "
            f"{fmt_pts(avgs[best[0]] - avgs[best[1]])} points above {best[1]}."
        )
    else:
        outcome = "Outcome: not run yet (needs at least two modes)."
    body = [
        f"Not in the paper: which trajectory rows the SVD sees, at dim {dim}. raw: the "
        "checkpoints θ_i as the paper writes W; delta: θ_i − θ0 (updates); centered: rows "
        "minus their mean (principal directions).",
        md_table(["task", *MODES], rows),
        outcome,
    ]
    return Section("Basis modes: raw / delta / centered (new)", body)


def section_theta_lr(res: Results) -> Section:
    """Setup check: intrinsic at the paper's theta lr beside the one these runs use."""
    cfg = res.cfg
    dim, ours, paper_lr = cfg["dim"], cfg["theta_lr"], cfg.get("paper_theta_lr", 0.01)
    columns = {
        "full": is_full,
        "freeze": is_freeze,
        f"intrinsic, paper's rule (V θ, lr {paper_lr:g})": intrinsic_lr(dim, paper_lr),
        f"intrinsic, θ lr {ours:g} (these runs)": intrinsic_at(dim),
    }
    stats = {label: res.per_task(sel) for label, sel in columns.items()}
    rows = [[t, *(res.fmt(st.get(t)) for st in stats.values())] for t in res.tasks]
    rows.append(["Avg.", *(avg_cell(st, res.tasks) for st in stats.values())])
    body = [
        f"Adam moves each θ coordinate by about its learning rate per step whatever the "
        f"direction's weight. Under the paper's rule (V θ, lr {paper_lr:g}) a direction the "
        "trajectory barely used moves as far as its main one; these runs scale each direction "
        "by the trajectory's own extent along it (V diag(e) θ"
        f"{', lr ' + format(ours, 'g') if cfg.get('head_lr') else ''}). The paper's rule is run "
        f"beside it at dim {dim} (same seeds, bases and data).",
        md_table(["task", *columns], rows),
    ]
    return Section("Setup check: the θ learning rate", body)
