"""Report sections for the diagnostics of `tinysub experiment paper`, beside report.py's tables.

Why a module of its own: these sections explain the paper's tables rather than reproduce them
(how the learning rates were picked, how much of a run a basis can hold, where theta went,
which runs diverged, and what the outlier collapse of Table 3 is made of). They read files
that only newer experiment folders have, so each section appears only when its data exist:

- DIR/tuning.json       learning-rate searches on the tuning split, and the freeze gate
- DIR/diagnostics.json  per task: the basis' spectrum, the oracle curve, the trajectory extent
- DIR/outliers.json     where the outliers sit, their overlaps, Table 3 zeroed post hoc
- runs.jsonl fields     `curve`/`losses` (learning curves), `theta` (what a subspace run did),
                        `held_zero` (Table 3 held at zero during fine-tuning)

A missing file or field drops its section; an unreadable or malformed one gives a section that
says so. Verdicts follow printed rules from the measured numbers, as in report.py.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from experiments import paper_numbers as paper
from experiments.ledger import RUNS_FILE
from experiments.report import (
    DASH,
    Finding,
    Record,
    Results,
    Section,
    Selector,
    Stat,
    disabled,
    fmt,
    intrinsic_at,
    is_freeze,
    is_full,
    md_table,
    random_at,
    stat,
    verdict,
)

TUNING_FILE = "tuning.json"
DIAGNOSTICS_FILE = "diagnostics.json"
OUTLIERS_FILE = "outliers.json"
# The phase of `tinysub experiment paper` that writes each file, named in "missing" notes.
PRODUCERS = {TUNING_FILE: "tune", DIAGNOSTICS_FILE: "diagnostics", OUTLIERS_FILE: "outliers"}

FIG_SPECTRUM = "fig_spectrum.png"
FIG_ORACLE = "fig_oracle.png"
FIG_CURVES = "fig_curves.png"
FIG_THETA = "fig_theta.png"

T_TUNING = "Hyper-parameters and the gate"
T_SPECTRUM = "Spectrum and energy"
T_ORACLE = "Oracle curve"
T_CURVES = "Learning curves"
T_THETA = "Theta against the trajectory's extent"
T_BELOW = "Runs below freeze"
T_CONTROLS = "Outliers, with controls"

# worker.finetune.diagnostics.SPECTRUM_KS, copied: importing the worker pulls in torch.
SPECTRUM_KS = (1, 2, 4, 8, 16, 32)
# worker.finetune.outlier_controls.CONTROL_MODES in the order the table shows them (a test
# checks that the two name the same modes).
CONTROLS = ("outlier", "random", "outlier_non_ln", "outlier_ln", "ln_gains", "random_matched")
CONTROL_LABELS = {
    "none": "none (full fine-tuning)",
    "outlier": "outlier: the outlier weights",
    "random": "random: as many uniformly random weights",
    "outlier_non_ln": "outlier_non_ln: the outliers that are not LayerNorm gains",
    "outlier_ln": "outlier_ln: only the outliers that are LayerNorm gains",
    "ln_gains": "ln_gains: every LayerNorm gain",
    "random_matched": "random_matched: random weights, the outliers' count per component",
}
# Runs of the Table 1 kind: a subspace of the encoder trained beside embeddings and head.
TABLE1_PHASES = ("table1", "ablation", "transfer", "unified")
TABLE1_METHODS = ("intrinsic", "random", "transfer", "unified", "zeroshot")
MAX_LISTED = 40  # rows of the below-freeze list; the count covers them all

# What malformed hand-written or partial JSON raises inside a section builder.
_DATA_ERRORS = (KeyError, TypeError, ValueError, AttributeError, IndexError, ZeroDivisionError)


# ============================================================================ entry point
def diagnostic_sections(res: Results, out_dir: Path, draw: bool) -> list[Section]:
    """The diagnostics sections whose data exist in `out_dir` (and `res`), in report order:
    tuning, spectrum, oracle, learning curves, theta vs extent, runs below freeze, outlier
    controls. Figures are written into `out_dir` when `draw`. Never raises on bad data."""
    out_dir = Path(out_dir)
    files = {name: _load(out_dir, name) for name in PRODUCERS}
    data = {name: got for name, (got, _) in files.items()}
    diag = data[DIAGNOSTICS_FILE]
    builders: list[tuple[str, str | None, Callable[[], Section | None]]] = [
        (T_TUNING, TUNING_FILE, lambda: section_tuning(res, data[TUNING_FILE])),
        (T_SPECTRUM, DIAGNOSTICS_FILE, lambda: section_spectrum(res, diag, out_dir, draw)),
        (T_ORACLE, DIAGNOSTICS_FILE, lambda: section_oracle(res, diag, out_dir, draw)),
        (T_CURVES, None, lambda: section_curves(res, out_dir, draw)),
        (T_THETA, None, lambda: section_theta(res, diag, out_dir, draw)),
        (T_BELOW, None, lambda: section_below_freeze(res)),
        (T_CONTROLS, None, lambda: section_controls(res, data[OUTLIERS_FILE])),
    ]
    sections = []
    for title, name, build in builders:
        problem = files[name][1] if name else None
        section = _unreadable(title, name, problem) if problem else _safely(title, build)
        if section is not None:
            sections.append(section)
    return sections


def _safely(title: str, build: Callable[[], Section | None]) -> Section | None:
    # A half-written or hand-edited file must not cost the whole report.
    try:
        return build()
    except _DATA_ERRORS as exc:
        return Section(title, [f"Not built: its input is malformed ({type(exc).__name__}: {exc})."])


def _load(out_dir: Path, name: str) -> tuple[dict | None, str | None]:
    """(data, None); (None, None) when the file is missing; (None, why) when unreadable."""
    path = out_dir / name
    if not path.exists():
        return None, None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return None, f"could not be read ({exc})"
    if not isinstance(data, dict):
        return None, f"holds a {type(data).__name__}, not a JSON object"
    return data, None


def _unreadable(title: str, name: str | None, problem: str) -> Section:
    return Section(
        title,
        [f"{name} {problem}: rerun the {PRODUCERS.get(name or '', '?')} phase to rewrite it."],
    )


# ============================================================================ small helpers
def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _float(v: Any) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _dict(v: Any) -> dict:
    return v if isinstance(v, dict) else {}


def _dicts(v: Any) -> list[dict]:
    return [x for x in v if isinstance(x, dict)] if isinstance(v, list) else []


def _pct(x: float | None, digits: int = 1) -> str:
    return DASH if x is None else f"{100 * x:.{digits}f}"


def _pts(x: float | None, signed: bool = False) -> str:
    if x is None:
        return DASH
    return f"{x:+.1f}" if signed else f"{x:.1f}"


def _g(s: Stat | None) -> str:
    """'mean ± std' to 3 significant digits, for quantities without a natural scale."""
    if s is None:
        return DASH
    return f"{s.mean:.3g}" + (f" ± {s.std:.3g}" if s.std is not None else "")


def _count(s: Stat | None) -> str:
    if s is None:
        return DASH
    return f"{s.mean:,.0f}" + (f" ± {s.std:,.0f}" if s.std is not None else "")


def _mean(values: Iterable[Any]) -> float | None:
    kept = [float(v) for v in values if _finite(v)]
    return statistics.fmean(kept) if kept else None


def _ordered(res: Results, found: Iterable[str]) -> list[str]:
    """The config's task order first, then any other task the file names."""
    found = [t for t in found if isinstance(t, str)]
    return [t for t in res.tasks if t in found] + sorted(set(found) - set(res.tasks))


def _avg_cell(stats: Mapping[str, Stat], tasks: Sequence[str]) -> str:
    """Mean over tasks of the per-task means (points), '(k/n)' when tasks are missing."""
    if not stats:
        return DASH
    avg = statistics.fmean(100 * s.mean for s in stats.values())
    return _pts(avg) + ("" if len(stats) == len(tasks) else f" ({len(stats)}/{len(tasks)})")


def _figure_line(
    out_dir: Path, draw: bool, name: str, label: str, has_data: bool, plot: Callable
) -> str:
    if not has_data:
        return f"{label}: not drawn, no data yet."
    if not draw:
        return f"{label}: not drawn (figures off)."
    plot(out_dir / name)
    return f"![{label}]({name})"


def _seed(r: Record) -> str:
    # Seeds are str keys in the JSON files and ints in runs.jsonl: compare them as str.
    return str(r.get("seed"))


# ============================================================================ 1. tuning
def section_tuning(res: Results, tuning: Mapping | None) -> Section | None:
    if tuning is None:
        return None
    searches, gate = _dict(tuning.get("searches")), _dict(tuning.get("gate"))
    body = [_tuning_split_line(tuning)]
    for name, search in searches.items():
        body += _search_part(res, str(name), _dict(search))
    if gate:
        body += [_gate_table(res, gate), _gate_line(gate)]
    if not searches and not gate:
        body.append(f"{TUNING_FILE} has no searches and no gate yet.")
    return Section(T_TUNING, body)


def _tuning_split_line(tuning: Mapping) -> str:
    split = tuning.get("split")
    seed, size = tuning.get("seed", DASH), tuning.get("tune_size", DASH)
    where = f"the {split!r} split" if split else "an unnamed split"
    where += f" (seed {seed}, {size} examples)"
    if split == "dev":
        return (
            f"Every learning rate below was chosen on {where}: that is the dev split the "
            "tables report, so their scores are tuned on and optimistic."
        )
    return (
        f"Every learning rate below was chosen on {where}, never on the dev split the tables "
        "report. Cells: score ×100 on that split, one run each (n = 1; mean ± std where a "
        "cell holds several seeds); mean: over the tasks."
    )


def _lr_scores(search: Mapping) -> dict[float, dict]:
    out = {}
    for key, row in _dict(search.get("scores")).items():
        lr = _float(key)
        if lr is not None:
            out[lr] = _dict(row)
    return out


def _cell_stat(v: Any) -> Stat | None:
    return stat(v) if isinstance(v, list) else stat([v])


def _same(a: float | None, b: float | None) -> bool:
    return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-9)


def _search_part(res: Results, name: str, search: Mapping) -> list[str]:
    scores = _lr_scores(search)
    grid = sorted({x for x in map(_float, search.get("grid") or []) if x is not None} | set(scores))
    tasks = _ordered(res, {t for row in scores.values() for t in row})
    chosen = _float(search.get("chosen"))
    rows, means = [], {}
    for lr in grid:
        stats = {t: s for t in tasks if (s := _cell_stat(scores.get(lr, {}).get(t))) is not None}
        if len(stats) == len(tasks) and stats:
            means[lr] = statistics.fmean(100 * s.mean for s in stats.values())
        label = f"{lr:g}" + (" **(chosen)**" if _same(lr, chosen) else "")
        rows.append([label, *(fmt(stats.get(t)) for t in tasks), _avg_cell(stats, tasks)])
    dim = search.get("dim")
    head = (
        f"**{name}** ({search.get('method', '?')} runs"
        + (f", dim {dim}" if dim else "")
        + "): "
        + _chosen_line(chosen, means)
    )
    return [head, md_table([f"{name}", *tasks, "mean"], rows) if rows else "No grid points."]


def _chosen_line(chosen: float | None, means: Mapping[float, float]) -> str:
    if chosen is None:
        return "no lr chosen yet."
    if not means:
        return f"chosen {chosen:g}."
    best = max(means, key=means.get)
    if _same(best, chosen):
        return f"chosen {chosen:g}, the grid's best mean ({_pts(means[best])})."
    mine = next((_pts(v) for lr, v in means.items() if _same(lr, chosen)), DASH)
    return (
        f"chosen {chosen:g} (mean {mine}); the grid's best mean is {_pts(means[best])} at {best:g}."
    )


def _gate_table(res: Results, gate: Mapping) -> str:
    rows = []
    for t in _ordered(res, gate):
        g = _dict(gate[t])
        freeze, major, margin = (_float(g.get(k)) for k in ("freeze", "majority", "margin"))
        gap = 100 * (freeze - major) if freeze is not None and major is not None else None
        passed = {True: "yes", False: "**no**"}.get(g.get("passed"), DASH)
        row = [t, g.get("metric", DASH), _pct(freeze), _pct(major), _pts(gap, True)]
        rows.append(row + [_pct(margin), passed])
    header = ["task", "metric", "freeze", "majority class", "freeze − majority", "margin", "passed"]
    return md_table(header, rows)


def _gate_line(gate: Mapping) -> str:
    passed = [t for t, g in gate.items() if _dict(g).get("passed") is True]
    failed = [t for t in gate if t not in passed]
    text = (
        f"Gate (on the tuning split, one run per task, n = 1): {len(passed)} of {len(gate)} "
        "tasks passed (freeze must beat the majority-class score by the margin, in points)"
    )
    return text + (f"; not passed: {', '.join(failed)}." if failed else ".")


# ============================================================================ 2. spectrum
def section_spectrum(
    res: Results, diag: Mapping | None, out_dir: Path, draw: bool
) -> Section | None:
    spectrum = _dict((diag or {}).get("spectrum"))
    if not spectrum:
        return None
    tasks = _ordered(res, spectrum)
    layers = {t: _dicts(_dict(spectrum[t]).get("layers")) for t in tasks}
    modes = {t: _dict(spectrum[t]).get("mode", DASH) for t in tasks}
    rows = [[t, modes[t], str(len(layers[t])), *_energy_cells(layers[t])] for t in tasks]
    header = ["task", "mode", "layers", *(f"k = {k}" for k in SPECTRUM_KS), "all kept"]
    panels = {t: _sigma_ratios(layers[t]) for t in tasks}
    panels = {t: p for t, p in panels.items() if p}
    body = [
        "Energy captured by the first k directions of each task's basis: their share of the "
        "trajectory matrix' squared Frobenius norm (%, mean over layers, min over layers in "
        "brackets). One basis per task, from one trajectory (the first seed's full run): no "
        "seed spread (n = 1), the spread shown is over layers. '–': k above the basis' rank.",
        md_table(header, rows),
    ]
    if "raw" in modes.values():
        body.append(
            "In a raw-mode basis the first direction is θ0's own and holds nearly all the "
            "energy; the fine-tuning motion lies in the others."
        )
    body.append(
        _figure_line(
            out_dir,
            draw,
            FIG_SPECTRUM,
            "σ_k / σ_1 per layer",
            bool(panels),
            lambda p: spectrum_plot(panels, p),
        )
    )
    return Section(T_SPECTRUM, body)


def captured_at(layer: Mapping, k: int) -> float | None:
    """Energy share of the first k directions of one layer: from its cumulative list
    ('cumulative', or 'cumulative_energy' as worker.finetune.diagnostics writes it), else
    summed from its per-direction 'energy'; None above the rank."""
    listed = _dicts(layer.get("cumulative") or layer.get("cumulative_energy"))
    for row in listed:
        if row.get("k") == k and _finite(row.get("captured")):
            return float(row["captured"])
    if listed:
        return None
    energy = [float(e) for e in layer.get("energy") or [] if _finite(e)]
    return float(sum(energy[:k])) if len(energy) >= k else None


def _energy_cells(layers: Sequence[Mapping]) -> list[str]:
    cells = []
    for k in SPECTRUM_KS:
        cells.append(_mean_min([captured_at(layer, k) for layer in layers], len(layers)))
    cells.append(_mean_min([_all_kept(layer) for layer in layers], len(layers)))
    return cells


def _all_kept(layer: Mapping) -> float | None:
    captured = _float(layer.get("captured"))
    if captured is not None:
        return captured
    energy = [float(e) for e in layer.get("energy") or [] if _finite(e)]
    return float(sum(energy)) if energy else None


def _mean_min(values: Sequence[float | None], n: int) -> str:
    kept = [v for v in values if v is not None]
    if not kept:
        return DASH
    text = f"{_pct(statistics.fmean(kept))} ({_pct(min(kept))})"
    return text + (f" [{len(kept)}/{n} layers]" if len(kept) < n else "")


def _sigma_ratios(layers: Sequence[Mapping]) -> dict[str, list[float]]:
    out = {}
    for i, layer in enumerate(layers):
        sv = [float(s) for s in layer.get("singular_values") or [] if _finite(s)]
        if sv and sv[0] > 0:
            out[str(layer.get("layer", f"layer {i}"))] = [s / sv[0] for s in sv]
    return out


# ============================================================================ 3. oracle
def section_oracle(res: Results, diag: Mapping | None, out_dir: Path, draw: bool) -> Section | None:
    oracle = _dict((diag or {}).get("oracle"))
    if not oracle:
        return None
    tasks = _ordered(res, oracle)
    points = {t: oracle_points(_dict(oracle[t])) for t in tasks}
    ks = oracle_ks({p["k"] for pts in points.values() for p in pts})
    top = max(ks) if ks else None
    rows = [_oracle_row(t, _dict(oracle[t]), points[t], ks) for t in tasks]
    header = ["task", "metric", "full", "freeze"]
    header += [f"k = {k}" + (" (t)" if k == top and len(ks) > 1 else "") for k in ks]
    curves = {t: {"points": points[t], **_dict(oracle[t])} for t in tasks if points[t]}
    body = [
        "The oracle sets every encoder layer to θ0 + P_k δ, δ full fine-tuning's final update "
        "projected on the first k directions of the task's basis, and keeps full's own head: "
        "what a run confined to those k directions could reach at best. Cells: dev score ×100 "
        "(|P_k δ| / |δ| in brackets, %). One full run per task (the first seed): no seed spread "
        "(n = 1).",
        md_table(header + ["first k within 2 points of full"], rows),
        _figure_line(
            out_dir,
            draw,
            FIG_ORACLE,
            "Oracle score against k",
            bool(curves),
            lambda p: oracle_plot(curves, p),
        ),
    ]
    return Section(T_ORACLE, body)


def oracle_points(entry: Mapping) -> list[dict]:
    """The points of one task with an integer k, sorted by k."""
    pts = [p for p in _dicts(entry.get("points")) if isinstance(p.get("k"), int)]
    return sorted(pts, key=lambda p: p["k"])


def oracle_ks(present: Iterable[int]) -> list[int]:
    """Every k when there are at most 8, else 1, 2, 4, ... 32 (those present) and the largest."""
    ks = sorted(set(present))
    if len(ks) <= 8:
        return ks
    picked = [k for k in SPECTRUM_KS if k in ks]
    return picked + ([ks[-1]] if ks[-1] not in picked else [])


def _oracle_row(task: str, entry: Mapping, points: Sequence[dict], ks: Sequence[int]) -> list:
    by_k = {p["k"]: p for p in points}
    full = _float(entry.get("full_score"))
    cells = []
    for k in ks:
        p = by_k.get(k)
        score = _float(p.get("score")) if p else None
        cells.append(
            DASH if score is None else f"{_pct(score)} ({_pct(_float(p.get('captured')), 0)}%)"
        )
    first = _first_within(points, full, 0.02)
    metric = entry.get("metric", DASH)
    return [task, metric, _pct(full), _pct(_float(entry.get("freeze_score"))), *cells, first]


def _first_within(points: Sequence[dict], full: float | None, margin: float) -> str:
    """The smallest k whose oracle score is at least full − margin; '> k_max' when none."""
    if full is None or not points:
        return DASH
    for p in points:
        score = _float(p.get("score"))
        if score is not None and score >= full - margin:
            return str(p["k"])
    return f"> {points[-1]['k']}"


# ============================================================================ 4. curves
def _curve(r: Record) -> list[tuple[float, float]]:
    """(step, held-out score) of a run's learning curve, in step order."""
    metric = r.get("metric")
    pts = [
        (float(p["step"]), float(p[metric]))
        for p in _dicts(r.get("curve"))
        if _finite(p.get("step")) and _finite(p.get(metric))
    ]
    return sorted(pts)


def curve_groups(res: Results) -> dict[str, Selector]:
    """Label -> selector of the runs with a learning curve: full, freeze, and intrinsic
    (delta basis) and random at each dim that has curves."""
    have = [r for r in res.records if _curve(r)]
    groups: dict[str, Selector] = {"full": is_full, "freeze": is_freeze}
    for method, at in (("intrinsic", intrinsic_at), ("random", random_at)):
        dims = sorted({r["dim"] for r in have if r["method"] == method and _finite(r.get("dim"))})
        groups.update({f"{method} (dim {d})": at(d) for d in dims})
    return groups


def section_curves(res: Results, out_dir: Path, draw: bool) -> Section | None:
    groups = curve_groups(res)
    rows, panels = [], {}
    for label, sel in groups.items():
        for t in res.tasks:
            runs = [r for r in res.select(sel, t) if _curve(r)]
            if not runs:
                continue
            rows.append(_curve_row(res, label, t, runs))
            panels.setdefault(t, {})[label] = _panel(_first_seed(runs))
    if not rows:
        return None
    body = [
        "Held-out score along training (the run's `curve`) and training loss. Table: the last "
        "point of the curve and the best point anywhere on it, ×100, mean ± std over seeds "
        "(n = runs when it differs from the seed count); best − final: points lost by "
        "stopping at the end instead of at the best step. Figure: the first seed's run of each "
        "method, loss as a moving average.",
        md_table(["run", "task", "final", "best in curve", "best − final", "runs"], rows),
        _figure_line(
            out_dir,
            draw,
            FIG_CURVES,
            "Learning curves",
            bool(panels),
            lambda p: curves_plot(panels, p),
        ),
    ]
    return Section(T_CURVES, body)


def _first_seed(runs: Sequence[Record]) -> Record:
    return min(runs, key=lambda r: _float(r.get("seed")) if _finite(r.get("seed")) else math.inf)


def _curve_row(res: Results, label: str, task: str, runs: Sequence[Record]) -> list[str]:
    final = stat(_curve(r)[-1][1] for r in runs)
    best = stat(max(v for _, v in _curve(r)) for r in runs)
    lost = stat(100 * (max(v for _, v in _curve(r)) - _curve(r)[-1][1]) for r in runs)
    return [label, task, res.fmt(final), res.fmt(best), fmt(lost, scale=1.0), str(len(runs))]


def _panel(r: Record) -> dict[str, list[tuple[float, float]]]:
    losses = [float(x) for x in r.get("losses") or [] if _finite(x)]
    return {"loss": moving_average(losses), "score": [(s, 100 * v) for s, v in _curve(r)]}


def moving_average(values: Sequence[float], window: int | None = None) -> list[tuple[float, float]]:
    """(step, mean of the `window` losses ending at that step); steps count from 1. The default
    window is a twentieth of the run: per-batch losses are too noisy to read."""
    if not values:
        return []
    w = max(1, min(len(values), window or len(values) // 20))
    smooth = np.convolve(np.asarray(values, dtype=float), np.ones(w) / w, mode="valid")
    return [(float(w + i), float(v)) for i, v in enumerate(smooth)]


# ============================================================================ 5. theta
def theta_label(r: Record) -> str:
    variant = r.get("variant")
    extra = f", {variant}" if variant not in (None, "-", "", "delta") else ""
    return f"{r['method']} (dim {r.get('dim')}{extra})"


def in_own_delta_basis(r: Record) -> bool:
    """Intrinsic runs in the delta mode of the task's own basis: the runs the extent (of the
    same task's trajectory, along the same directions) is measured for."""
    came = r.get("basis_from")
    return (
        r["method"] == "intrinsic"
        and r.get("variant") == "delta"
        and r.get("scope", "layer") == "layer"
        and not r.get("said")
        and came in (None, r["task"])
    )


def layer_ratios(theta: Mapping, extent: Mapping) -> dict[str, list[float | None]]:
    """layer -> coord_abs_k / extent_k per k (None where the extent is 0 or missing)."""
    out = {}
    for layer, info in theta.items():
        ext = extent.get(layer)
        if not isinstance(ext, list):
            continue
        coords = _dict(info).get("coord_abs") or []
        out[layer] = [
            float(c) / float(e) if _finite(c) and _finite(e) and e > 0 else None
            for c, e in zip(coords, ext, strict=False)
        ]
    return out


def run_ratio(theta: Mapping, extent: Mapping) -> tuple[float | None, float | None]:
    """(mean over layers, max over layers) of max_k coord_abs_k / extent_k for one run."""
    maxima = [
        max(v for v in rs if v is not None)
        for rs in layer_ratios(theta, extent).values()
        if any(v is not None for v in rs)
    ]
    return (statistics.fmean(maxima), max(maxima)) if maxima else (None, None)


def section_theta(res: Results, diag: Mapping | None, out_dir: Path, draw: bool) -> Section | None:
    runs = [r for r in res.records if _dict(r.get("theta"))]
    if not runs:
        return None
    extents = _dict((diag or {}).get("extent"))
    groups: dict[tuple[str, str], list[Record]] = {}
    for r in runs:
        groups.setdefault((r["task"], theta_label(r)), []).append(r)
    tasks = _ordered(res, {t for t, _ in groups})
    rows = [
        _theta_row(t, label, recs, _dict(extents.get(t)))
        for t in tasks
        for (tt, label), recs in sorted(groups.items())
        if tt == t
    ]
    # ‖·‖ for norms: a '|' inside a cell would split the markdown table.
    header = ["task", "run", "‖V θ‖ (mean over layers)", "‖V θ‖ / ‖θ0‖"]
    header += ["max_k coord/extent (mean over layers)", "(max over layers)", "runs beyond (> 1)"]
    panels = _theta_panels(runs, extents)
    body = [_theta_intro(extents), md_table(header, rows)]
    body.append(
        _figure_line(
            out_dir,
            draw,
            FIG_THETA,
            "coord_k / extent_k",
            bool(panels),
            lambda p: theta_plot(panels, p),
        )
    )
    return Section(T_THETA, body)


def _theta_intro(extents: Mapping) -> str:
    text = (
        "What each subspace run did to the encoder: |V θ|, the update in parameter space (mean "
        "over layers), and its size relative to θ0. For intrinsic runs in the task's own delta "
        "basis: coord_k / extent_k, how far θ moved along direction k (|coordinate k of the "
        "update|) against the furthest the task's own full fine-tuning trajectory went along "
        "it (max over recorded checkpoints of |(w_i − w_0)·v_k|); > 1: θ went beyond where "
        "fine-tuning itself went. Cells: mean ± std over seeds."
    )
    if not extents:
        text += (
            f" {DIAGNOSTICS_FILE} has no 'extent' (the {PRODUCERS[DIAGNOSTICS_FILE]} phase "
            "writes it): the ratio columns are empty."
        )
    return text


def _theta_row(task: str, label: str, recs: Sequence[Record], extent: Mapping) -> list:
    updates = stat(_mean(_dict(i).get("update_norm") for i in r["theta"].values()) for r in recs)
    rel = stat(_mean(_dict(i).get("relative_update") for i in r["theta"].values()) for r in recs)
    own = [r for r in recs if in_own_delta_basis(r)] if extent else []
    ratios = [run_ratio(r["theta"], extent) for r in own]
    means = stat(m for m, _ in ratios)
    maxes = stat(x for _, x in ratios)
    beyond = f"{sum(x > 1 for x in maxes.values)}/{maxes.n}" if maxes else DASH
    return [task, label, _g(updates), _g(rel), _g(means), _g(maxes), beyond]


def _theta_panels(runs: Sequence[Record], extents: Mapping) -> dict:
    """task -> 'dim d' -> (k, mean over layers and seeds of coord_k / extent_k)."""
    sums: dict[str, dict[str, dict[int, list[float]]]] = {}
    for r in runs:
        extent = _dict(extents.get(r["task"]))
        if not extent or not in_own_delta_basis(r):
            continue
        cell = sums.setdefault(r["task"], {}).setdefault(f"dim {r.get('dim')}", {})
        for ratios in layer_ratios(r["theta"], extent).values():
            for k, v in enumerate(ratios, 1):
                if v is not None and v > 0:
                    cell.setdefault(k, []).append(v)
    return {
        t: {
            lab: sorted((k, statistics.fmean(v)) for k, v in ks.items())
            for lab, ks in d.items()
            if ks
        }
        for t, d in sums.items()
    }


# ============================================================================ 6. below freeze
def table1_style(r: Record) -> bool:
    return r.get("phase") in TABLE1_PHASES and r["method"] in TABLE1_METHODS


def freeze_means(res: Results) -> dict[tuple[str, str], float]:
    """(task, seed) -> mean score of the freeze runs (method freeze, variant '-')."""
    cells: dict[tuple[str, str], list[float]] = {}
    for r in res.records:
        if (
            r["method"] == "freeze"
            and r.get("variant", "-") in ("-", None)
            and _finite(r.get("score"))
        ):
            cells.setdefault((r["task"], _seed(r)), []).append(float(r["score"]))
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
        f = freeze.get((r["task"], _seed(r)))
        if f is None:
            lacking += 1
            continue
        compared += 1
        score = r.get("score")
        if not (_finite(score) and score >= f):
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
    score = _float(r.get("score"))
    gap = _pts(100 * (score - freeze), True) if score is not None else DASH
    return [str(r.get("id", DASH)), r["task"], _seed(r), _pct(score), _pct(freeze), gap]


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
                _pct(med),
                _pts(100 * (s.mean - med), True) if s else DASH,
            ]
        )
    return rows


# ============================================================================ 7. controls
Scores = dict[str, dict[tuple[str, str], float]]  # mode -> (task, seed) -> score


def held_scores(res: Results) -> Scores:
    """Table 3 held at zero during fine-tuning, from runs.jsonl: 'none' is plain full."""
    out: Scores = {}
    for mode in ("none", *CONTROLS):
        sel = is_full if mode == "none" else disabled(mode)
        cells: dict[tuple[str, str], list[float]] = {}
        for r in res.select(sel):
            if _finite(r.get("score")):
                cells.setdefault((r["task"], _seed(r)), []).append(float(r["score"]))
        out[mode] = {k: statistics.fmean(v) for k, v in cells.items()}
    return out


def posthoc_scores(posthoc: Mapping) -> Scores:
    """Table 3 zeroed in the finished full model, from outliers.json's 'posthoc'."""
    out: Scores = {mode: {} for mode in ("none", *CONTROLS)}
    for task, seeds in posthoc.items():
        for seed, row in _dict(seeds).items():
            for mode in out:
                if _finite(_dict(row).get(mode)):
                    out[mode][(str(task), str(seed))] = float(row[mode])
    return out


@dataclass(frozen=True)
class Contrast:
    """a − b in points over the (task, seed) pairs both have."""

    gap: float | None  # mean over tasks of the per-task mean difference
    per_task: dict[str, float]
    by_seed: Stat | None  # per seed: mean over tasks of the difference (the seed spread)


def contrast(scores: Scores, a: str, b: str) -> Contrast:
    sa, sb = scores.get(a, {}), scores.get(b, {})
    pairs = {k: 100 * (sa[k] - sb[k]) for k in sa if k in sb}
    by_task: dict[str, list[float]] = {}
    by_seed: dict[str, list[float]] = {}
    for (task, seed), d in pairs.items():
        by_task.setdefault(task, []).append(d)
        by_seed.setdefault(seed, []).append(d)
    per_task = {t: statistics.fmean(v) for t, v in by_task.items()}
    gap = statistics.fmean(per_task.values()) if per_task else None
    return Contrast(gap, per_task, stat(statistics.fmean(v) for v in by_seed.values()))


def _c(c: Contrast) -> str:
    """'12.3 points (per seed 12.3 ± 1.0, n = 3 seeds; 2 tasks)'."""
    if c.gap is None:
        return DASH
    s = c.by_seed
    spread = f"{s.mean:.1f} ± {s.std:.1f}" if s and s.std is not None else "one seed"
    n = f", n = {s.n} seeds" if s and s.std is not None else ""
    return f"{c.gap:.1f} points (per seed {spread}{n}; {len(c.per_task)} tasks)"


def section_controls(res: Results, outliers: Mapping | None) -> Section | None:
    held = held_scores(res)
    has_held = any(held[m] for m in CONTROLS)
    if outliers is None and not has_held:
        return None
    data = outliers or {}
    post = posthoc_scores(_dict(data.get("posthoc")))
    sigma = data.get("sigma", res.cfg.get("sigma"))
    body = [
        f"Outliers: the {sigma}σ entries of V θ "
        f"({data.get('source', 'source not recorded')}). Each control zeroes another set of "
        "encoder weights; Table 3 is shown both ways: held at zero during full fine-tuning "
        "(runs.jsonl), and zeroed in the finished full model (no retraining). Cells: score ×100, "
        "mean ± std over seeds, (n=k) when a cell has k runs instead of one per seed.",
        "**Held at zero during fine-tuning**",
        _table3(res, held, _held_counts(res))
        if has_held
        else _missing(f"disable-* runs in {RUNS_FILE}"),
        "**Zeroed in the finished full model**",
        _table3(res, post, _posthoc_counts(data))
        if any(post.values())
        else _missing(f"'posthoc' in {OUTLIERS_FILE}"),
    ]
    body += _where_parts(res, data) if outliers is not None else [_missing(OUTLIERS_FILE)]
    return Section(T_CONTROLS, body, [t3_finding(held, post), t3c_finding(held, post)])


def _missing(what: str) -> str:
    return f"No {what} yet (written by the {PRODUCERS[OUTLIERS_FILE]} phase)."


def _table3(res: Results, scores: Scores, counts: Mapping[str, float]) -> str:
    tasks = _ordered(res, {t for cells in scores.values() for t, _ in cells})
    rows = []
    for mode in ("none", *CONTROLS):
        stats = {
            t: s for t in tasks if (s := stat(v for (tt, _), v in scores[mode].items() if tt == t))
        }
        count = counts.get(mode)
        rows.append(
            [
                CONTROL_LABELS[mode],
                *(res.fmt(stats.get(t)) for t in tasks),
                _avg_cell(stats, tasks),
                DASH if count is None else f"{count:,.0f}",
            ]
        )
    return md_table(["zeroed", *tasks, "Avg.", "weights zeroed (mean)"], rows)


def _held_counts(res: Results) -> dict[str, float]:
    out = {m: _mean(r.get("held_zero") for r in res.select(disabled(m))) for m in CONTROLS}
    return {m: v for m, v in out.items() if v is not None}


def _runs(data: Mapping) -> list[tuple[str, str, dict]]:
    """(task, seed, entry) of outliers.json's 'runs'."""
    return [
        (str(t), str(s), _dict(e))
        for t, seeds in _dict(data.get("runs")).items()
        for s, e in _dict(seeds).items()
    ]


def _posthoc_counts(data: Mapping) -> dict[str, float]:
    rows = [
        _dict(_dict(e).get("counts"))
        for seeds in _dict(data.get("posthoc")).values()
        for e in _dict(seeds).values()
    ]
    out = {m: _mean(c.get(m) for c in rows) for m in CONTROLS}
    return {m: v for m, v in out.items() if v is not None}


def _where_parts(res: Results, data: Mapping) -> list[str]:
    runs = _runs(data)
    parts = [_enrichment_table(runs), _overlap_table(res, runs), _jaccard_table(data)]
    return [p for p in parts if p]


def _enrichment_table(runs: Sequence[tuple[str, str, dict]]) -> str:
    comps: dict[str, dict[str, list]] = {}
    for _, _, e in runs:
        for row in _dicts(e.get("enrichment")):
            cell = comps.setdefault(str(row.get("component")), {})
            for key in ("count", "expected", "fraction", "share", "enrichment", "z"):
                cell.setdefault(key, []).append(row.get(key))
    if not comps:
        return ""
    rows = [
        [
            comp,
            _pct(_mean(c["share"]), 2),
            fmt(stat(c["fraction"]), digits=2),
            f"{_mean(c['count']) or 0:,.0f} / {_mean(c['expected']) or 0:,.0f}",
            _g(stat(c["enrichment"])),
            _g(stat(c["z"])),
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
    for t in _ordered(res, {t for t, _, _ in runs}):
        es = [e for tt, _, e in runs if tt == t]
        top = [_dict(e.get("theta0_top_overlap")) for e in es]
        rows.append(
            [
                t,
                str(len(es)),
                _count(stat(e.get("count") for e in es)),
                fmt(stat(e.get("fraction") for e in es), digits=2),
                fmt(stat(x.get("fraction") for x in top)),
                _pct(_mean(x.get("expected") for x in top), 2),
                fmt(stat(e.get("ln_gain_share") for e in es)),
                _pct(_mean(e.get("ln_gain_param_share") for e in es), 2),
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
    for row in _dicts(data.get("cross_task")):
        pairs.setdefault((str(row.get("a")), str(row.get("b"))), []).append(row)
    rows = []
    for (a, b), rs in sorted(pairs.items()):
        j, e = stat(r.get("jaccard") for r in rs), _mean(r.get("expected_jaccard") for r in rs)
        ratio = f"{j.mean / e:.3g}×" if j and e else DASH
        rows.append([a, b, _g(j), str(j.n if j else 0), DASH if e is None else f"{e:.3g}", ratio])
    if not rows:
        return ""
    return (
        "Do two tasks find the same positions? Jaccard index of their outlier sets (mean ± std "
        "over seeds) against two random sets of the same sizes.\n\n"
        + md_table(["task a", "task b", "Jaccard", "seeds", "expected (random)", "ratio"], rows)
    )


# ---------------------------------------------------------------------------- findings
T3_CLAIM = "disabling outliers hurts much more than disabling as many random weights"
T3C_CLAIM = "the collapse is task knowledge, not the mechanics of zeroing LayerNorm gains"
T3C_NEEDS = ("outlier", "random", "outlier_non_ln", "random_matched", "outlier_ln")


def _paper_t3(model: str) -> float:
    rows = paper.TABLE3[model]
    return statistics.fmean(rows["random"][g] - rows["outlier"][g] for g in paper.GLUE)


def t3_finding(held: Scores, post: Scores) -> Finding:
    c, p = contrast(held, "random", "outlier"), contrast(post, "random", "outlier")
    f = Finding(
        "T3",
        T3_CLAIM,
        "mean over tasks of (random − outlier), both held at zero during fine-tuning, ≥ 20 "
        "points → holds; ≥ 5 → partly; else does not hold",
        verdict(c.gap, 20, 5),
        measured=f"held during fine-tuning: random − outlier = {_c(c)}; zeroed post hoc: {_c(p)}",
        paper=f"BERT {_paper_t3('BERT'):.1f}, RoBERTa {_paper_t3('RoBERTa'):.1f} points "
        "(mean of its 8 tasks)",
    )
    if c.gap is None:
        f.reason = (
            "needs the full runs with the outliers and with as many random weights held at "
            f"zero (the {PRODUCERS[OUTLIERS_FILE]} phase)"
        )
        return f
    f.reason = "; ".join(
        h
        for h in (
            "per task: " + ", ".join(f"{t} {_pts(v)}" for t, v in c.per_task.items()),
            _noise(c),
            f"zeroed post hoc the gap is {_pts(p.gap)} points" if p.gap is not None else "",
        )
        if h
    )
    return f


def _noise(c: Contrast) -> str:
    s = c.by_seed
    if c.gap is None or s is None or s.std is None or abs(c.gap) > s.std:
        return ""
    return f"the gap ({_pts(c.gap)} points) is within its seed spread (± {_pts(s.std)})"


@dataclass(frozen=True)
class Mechanism:
    """The contrasts of T3c under one protocol (points)."""

    collapse: Contrast  # random − outlier
    knowledge: Contrast  # random_matched − outlier_non_ln
    ln_alone: Contrast  # random − outlier_ln
    all_gains: Contrast  # random − ln_gains

    @classmethod
    def of(cls, scores: Scores) -> Mechanism:
        return cls(
            contrast(scores, "random", "outlier"),
            contrast(scores, "random_matched", "outlier_non_ln"),
            contrast(scores, "random", "outlier_ln"),
            contrast(scores, "random", "ln_gains"),
        )

    @property
    def any(self) -> bool:
        return self.collapse.gap is not None or self.knowledge.gap is not None

    @property
    def complete(self) -> bool:
        return None not in (self.collapse.gap, self.knowledge.gap, self.ln_alone.gap)

    def score(self) -> float | None:
        """2 holds, 1 partly, 0 does not hold (the rule of T3C_RULE); None when incomplete."""
        if not self.complete:
            return None
        c, k, ln = self.collapse.gap, self.knowledge.gap, self.ln_alone.gap
        if c < 5 or k < 5:
            return 0.0
        return 2.0 if ln < c / 2 else 1.0

    def text(self) -> str:
        c, ln = self.collapse.gap, self.ln_alone.gap
        share = f", {ln / c:.0%} of the collapse" if c and ln is not None and c > 0 else ""
        return (
            f"collapse C = random − outlier = {_c(self.collapse)}; K = random_matched − "
            f"outlier_non_ln = {_c(self.knowledge)}; L = random − outlier_ln = "
            f"{_c(self.ln_alone)}{share}; all gains: random − ln_gains = {_c(self.all_gains)}"
        )


T3C_RULE = (
    "C = mean over tasks of (random − outlier), K = of (random_matched − outlier_non_ln), "
    "L = of (random − outlier_ln), in points, judged on the runs held at zero during "
    "fine-tuning (zeroed post hoc when those lack a control): K ≥ 5 and L < C/2 → holds "
    "(non-LayerNorm outliers hurt more than random weights of the same components, and the "
    "outliers' LayerNorm gains alone explain under half the collapse); K ≥ 5 and L ≥ C/2 → "
    "partly (both play a part); K < 5 or C < 5 (no collapse to explain) → does not hold"
)


def t3c_finding(held: Scores, post: Scores) -> Finding:
    mech = {
        "held at zero during fine-tuning": Mechanism.of(held),
        "zeroed post hoc": Mechanism.of(post),
    }
    judged = next((name for name, m in mech.items() if m.complete), None)
    score = mech[judged].score() if judged else None
    measured = "; ".join(f"{name}: {m.text()}" for name, m in mech.items() if m.any)
    f = Finding(
        "T3c",
        T3C_CLAIM,
        T3C_RULE,
        verdict(score, 2, 1),
        measured=f"judged on the runs {judged}. {measured}" if judged else "",
        paper="not tested (the paper's only control is as many random weights)",
    )
    if judged is None:
        f.reason = (
            f"needs the controls {', '.join(T3C_NEEDS)} held at zero or zeroed post hoc "
            f"(the {PRODUCERS[OUTLIERS_FILE]} phase)"
        )
        return f
    f.reason = _t3c_reason(mech[judged], mech)
    return f


def _t3c_reason(m: Mechanism, mech: Mapping[str, Mechanism]) -> str:
    c, k, ln = m.collapse.gap, m.knowledge.gap, m.ln_alone.gap
    hints = []
    if c < 5:
        hints.append(f"there is little collapse to explain (random − outlier = {_pts(c)} points)")
    if k < 5:
        hints.append(
            f"the non-LayerNorm outliers cost only {_pts(k)} points more than random weights "
            "of the same components"
        )
    if c >= 5 and ln >= c / 2:
        hints.append(
            f"zeroing only the outliers' LayerNorm gains already costs {_pts(ln)} of the "
            f"{_pts(c)} points"
        )
    hints.append(_noise(m.knowledge))
    verdicts = {name: x.score() for name, x in mech.items() if x.complete}
    if len(set(verdicts.values())) > 1:
        hints.append(
            "the two protocols disagree: "
            + ", ".join(f"{n} {verdict(v, 2, 1)}" for n, v in verdicts.items())
        )
    return "; ".join(h for h in hints if h) or "no simple cause visible in the numbers"


# ============================================================================ figures
def _canvas(width: float, height: float) -> Figure:
    # A fresh Agg canvas per figure, as experiments/figures.py: no pyplot state, no display.
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _axes(fig: Figure, n: int, cols: int = 2) -> list:
    cols = max(1, min(cols, n))
    rows = math.ceil(n / cols)
    axes = list(fig.subplots(rows, cols, squeeze=False).ravel())
    for ax in axes[n:]:
        ax.set_visible(False)
    return axes[:n]


def spectrum_plot(panels: Mapping[str, Mapping[str, Sequence[float]]], path: Path) -> None:
    """One panel per task: σ_k / σ_1 against k, one line per layer, log y."""
    n = len(panels)
    fig = _canvas(4.2 * min(2, n), 3.0 * math.ceil(n / 2))
    for ax, (task, layers) in zip(_axes(fig, n), panels.items(), strict=True):
        for i, (layer, ratios) in enumerate(layers.items()):
            ks = range(1, len(ratios) + 1)
            ax.plot(ks, [max(r, 1e-12) for r in ratios], color=f"C{i % 10}", label=layer, lw=1)
        ax.set_yscale("log")
        ax.set_title(task, fontsize=10)
        ax.set_xlabel("k")
        ax.set_ylabel("σ_k / σ_1")
        ax.legend(fontsize=6)
    fig.savefig(path, dpi=120)


def oracle_plot(curves: Mapping[str, Mapping[str, Any]], path: Path) -> None:
    """One panel per task: oracle score against k (full and freeze as lines), and
    |P_k δ| / |δ| on a twin axis."""
    n = len(curves)
    fig = _canvas(4.6 * min(2, n), 3.2 * math.ceil(n / 2))
    for ax, (task, c) in zip(_axes(fig, n), curves.items(), strict=True):
        pts = [p for p in c["points"] if _finite(p.get("score"))]
        ax.plot([p["k"] for p in pts], [100 * p["score"] for p in pts], "o-", label="oracle")
        for key, style, label in (("full_score", "-", "full"), ("freeze_score", ":", "freeze")):
            if _finite(c.get(key)):
                ax.axhline(100 * c[key], ls=style, color="0.3", label=label)
        ax.set_xscale("log", base=2)
        ax.set_title(task, fontsize=10)
        ax.set_xlabel("k (directions per layer)")
        ax.set_ylabel("dev score (x100)")
        ax.legend(fontsize=7, loc="lower right")
        cap = [p for p in c["points"] if _finite(p.get("captured"))]
        twin = ax.twinx()
        twin.plot([p["k"] for p in cap], [100 * p["captured"] for p in cap], "s--", color="C1")
        twin.set_ylabel("|P_k δ| / |δ| (%)", color="C1")
    fig.savefig(path, dpi=120)


def curves_plot(panels: Mapping[str, Mapping[str, Mapping[str, list]]], path: Path) -> None:
    """Per task a row of two panels: training loss (moving average) and held-out score
    against step, one line per run kind."""
    n = len(panels)
    fig = _canvas(9.0, 3.0 * n)
    axes = fig.subplots(n, 2, squeeze=False)
    for (ax_loss, ax_score), (task, runs) in zip(axes, panels.items(), strict=True):
        for i, (label, series) in enumerate(runs.items()):
            for ax, key in ((ax_loss, "loss"), (ax_score, "score")):
                pts = series[key]
                if pts:
                    xs, ys = zip(*pts, strict=True)
                    ax.plot(xs, ys, color=f"C{i % 10}", label=label, lw=1)
        ax_loss.set_title(f"{task}: training loss", fontsize=10)
        ax_score.set_title(f"{task}: held-out score", fontsize=10)
        ax_loss.set_xlabel("step")
        ax_score.set_xlabel("step")
        ax_score.set_ylabel("score (x100)")
        ax_score.legend(fontsize=7)
    fig.savefig(path, dpi=120)


def theta_plot(panels: Mapping[str, Mapping[str, Sequence[tuple[int, float]]]], path: Path) -> None:
    """One panel per task: coord_k / extent_k against k, one line per dim, log y; the dashed
    line at 1 is the trajectory's own reach."""
    n = len(panels)
    fig = _canvas(4.2 * min(2, n), 3.0 * math.ceil(n / 2))
    for ax, (task, lines) in zip(_axes(fig, n), panels.items(), strict=True):
        for i, (label, pts) in enumerate(lines.items()):
            ax.plot(
                [k for k, _ in pts],
                [v for _, v in pts],
                "o-",
                ms=3,
                color=f"C{i % 10}",
                label=label,
            )
        ax.axhline(1.0, ls="--", color="0.3", label="trajectory's extent")
        ax.set_yscale("log")
        ax.set_title(task, fontsize=10)
        ax.set_xlabel("k")
        ax.set_ylabel("coord_k / extent_k (mean over layers)")
        ax.legend(fontsize=7)
    fig.savefig(path, dpi=120)
