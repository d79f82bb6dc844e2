"""DIR/report.md and its figures, built from what `tinysub experiment paper` wrote into DIR.

Why the report computes its own verdicts: a reproduction is only as honest as its summary. Each
finding of the paper gets a one-line verdict (holds / partly / does not hold / not run yet)
derived from the measured means by a rule printed in the report, never written by hand, and
every table shows mean ± std over seeds with the paper's numbers beside it. Where a verdict is
not "holds", a "Likely reason:" line offers simple, factual hints from the same numbers (the
encoder barely moves on the task, the gap is within seed noise, ...).

The report works on partial results: a missing run shows as "–", a finding without its runs
says "not run yet", a missing config.json / phases.json / d90.json or run folder is noted and
skipped. Only a missing runs.jsonl is an error (there is nothing to report).

Which records feed which table is decided by their fields (method, variant, mode, dim, scope),
never by their phase: one run can serve several tables (intrinsic at dim 16 is in Tables 5/6,
the modes comparison and a d90 search).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from experiments import figures
from experiments import paper_numbers as paper
from experiments.config import PHASES, TASKS, PaperConfig
from experiments.ledger import RUNS_FILE, read_runs
from storage.errors import NotFound

REPORT_FILE = "report.md"
FIG2 = "fig2_transfer.png"
FIG4 = "fig4_outliers.png"
FIG_DIMS = "fig_dims.png"
FIG_D90 = "fig_d90.png"

DASH = "–"
HOLDS, PARTLY, FAILS, NOT_RUN = "holds", "partly", "does not hold", "not run yet"
MODES = ("raw", "delta", "centered")
# Ensemble size h of the subspace runs (free_params counts their mean once, as the papers do).
H = paper.PAPER_ENSEMBLE

Record = dict[str, Any]
Selector = Callable[[Record], bool]
Value = Callable[[Record], Any]


# ============================================================================ numbers
@dataclass(frozen=True)
class Stat:
    """Seed values of one cell; std is the sample std (ddof=1), None for a single value."""

    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if self.n >= 2 else None


def stat(values: Iterable[Any]) -> Stat | None:
    """The finite numbers among `values`, or None when there are none."""
    kept = tuple(float(v) for v in values if _finite(v))
    return Stat(kept) if kept else None


def fmt(s: Stat | None, seeds: int | None = None, scale: float = 100.0, digits: int = 1) -> str:
    """'mean ± std' (x scale), just the mean for one value, '–' for none; '(n=k)' when k
    differs from the expected seed count."""
    if s is None:
        return DASH
    text = f"{s.mean * scale:.{digits}f}"
    if s.std is not None:
        text += f" ± {s.std * scale:.{digits}f}"
    if seeds is not None and s.n != seeds:
        text += f" (n={s.n})"
    return text


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _pts(x: float | None, signed: bool = False) -> str:
    if x is None:
        return DASH
    return f"{x:+.1f}" if signed else f"{x:.1f}"


def verdict(
    value: float | None,
    holds: float,
    partly: float | None = None,
    *,
    lower_is_better: bool = False,
) -> str:
    """'holds' when `value` meets the `holds` bar, 'partly' when it meets the `partly` bar,
    else 'does not hold'; 'not run yet' without a value. Bars are inclusive."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NOT_RUN

    def meets(bar: float) -> bool:
        return value <= bar if lower_is_better else value >= bar

    if meets(holds):
        return HOLDS
    if partly is not None and meets(partly):
        return PARTLY
    return FAILS


def mean_gap(a: Mapping[str, Stat], b: Mapping[str, Stat]) -> float | None:
    """Mean over the tasks both have of (a - b), in points (x100)."""
    common = [t for t in a if t in b]
    if not common:
        return None
    return statistics.fmean(100 * (a[t].mean - b[t].mean) for t in common)


def share_above(a: Mapping[str, Stat], b: Mapping[str, Stat]) -> float | None:
    """Fraction of the tasks both have where a's mean is above b's."""
    common = [t for t in a if t in b]
    if not common:
        return None
    return sum(a[t].mean > b[t].mean for t in common) / len(common)


def seed_noise(a: Mapping[str, Stat], b: Mapping[str, Stat]) -> float | None:
    """Typical seed std of a comparison: mean over common tasks of the larger std, points."""
    stds = [
        100 * max(s.std or 0.0, o.std or 0.0)
        for t, s in a.items()
        if (o := b.get(t)) is not None and (s.std is not None or o.std is not None)
    ]
    return statistics.fmean(stds) if stds else None


def average(stats: Mapping[str, Stat]) -> float | None:
    """Mean over tasks of the per-task seed means, points."""
    return statistics.fmean(100 * s.mean for s in stats.values()) if stats else None


# ============================================================================ inputs
@dataclass
class Results:
    """Everything the report reads from DIR, with the config's gaps filled by defaults."""

    records: list[Record]
    cfg: dict[str, Any]
    phases: dict[str, Any] = field(default_factory=dict)
    d90: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    out_dir: Path | None = None

    @property
    def tasks(self) -> list[str]:
        listed = list(self.cfg["tasks"])
        return listed + sorted({r["task"] for r in self.records} - set(listed))

    @property
    def seeds(self) -> list[int]:
        return list(self.cfg["seeds"])

    @property
    def n_seeds(self) -> int:
        return len(self.seeds)

    def select(self, sel: Selector, task: str | None = None) -> list[Record]:
        return [r for r in self.records if sel(r) and (task is None or r["task"] == task)]

    def stat(self, task: str, sel: Selector, value: Value | None = None) -> Stat | None:
        value = value or _score
        return stat(value(r) for r in self.select(sel, task))

    def per_task(self, sel: Selector, value: Value | None = None) -> dict[str, Stat]:
        out = {t: self.stat(t, sel, value) for t in self.tasks}
        return {t: s for t, s in out.items() if s is not None}

    def fmt(self, s: Stat | None) -> str:
        return fmt(s, self.n_seeds)


def _score(r: Record) -> Any:
    return r.get("score")


def _usable(r: Any) -> bool:
    return isinstance(r, dict) and bool(r.get("task")) and bool(r.get("method"))


def _read_json(path: Path, notes: list[str], why: str) -> dict[str, Any]:
    if not path.exists():
        notes.append(f"{path.name} is missing: {why}.")
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        notes.append(f"{path.name} could not be read ({exc}): {why}.")
        return {}
    return data if isinstance(data, dict) else {}


def config_with_defaults(raw: Mapping[str, Any] | PaperConfig, records: Sequence[Record]) -> dict:
    """config.json as a dict; keys it lacks come from PaperConfig's defaults, or from the
    records (tasks, seeds) when config.json is missing altogether."""
    if isinstance(raw, PaperConfig):
        raw = {**raw.to_dict(), "record_every": raw.record_every}
    cfg: dict[str, Any] = {**PaperConfig().to_dict(), **raw}
    if "tasks" not in raw:
        found = {r["task"] for r in records}
        cfg["tasks"] = [t for t in TASKS if t in found] + sorted(found - set(TASKS))
    if "seeds" not in raw:
        cfg["seeds"] = sorted({int(r["seed"]) for r in records if _finite(r.get("seed"))}) or [0]
    # Learning rates phase tune chose (experiments.tune) stand where the settings left them
    # open; a folder still being tuned shows them as "not chosen yet".
    for name, value in (cfg.get("chosen") or {}).items():
        if cfg.get(name) is None:
            cfg[name] = value
    for name in ("lr", "head_lr", "theta_lr", "plain_theta_lr"):
        if cfg.get(name) is None:
            cfg[name] = float("nan")
    n = len(cfg["tasks"])
    cfg.setdefault("record_every", cfg["steps"] // max(1, cfg["rows"]))
    cfg.setdefault("unified_dim", min(cfg["dim"], cfg["unified_per_task"] * n))
    cfg.setdefault("zeroshot_dim", min(cfg["dim"], cfg["unified_per_task"] * max(0, n - 1)))
    cfg.setdefault("layers", _infer_layers(records))
    return cfg


def _infer_layers(records: Sequence[Record]) -> int | None:
    """Encoder layers from a layer-wise subspace record: free_params = dim x layers."""
    for r in records:
        if r.get("method") in ("intrinsic", "random") and r.get("scope", "layer") == "layer":
            dim, free = r.get("dim"), r.get("free_params")
            if dim and free and not r.get("said") and free % dim == 0:
                return free // dim
    return None


def load_results(out_dir: str | os.PathLike) -> Results:
    """Read DIR. Raises NotFound when DIR has no runs.jsonl."""
    out = Path(out_dir)
    if not (out / RUNS_FILE).exists():
        raise NotFound(
            f"no {RUNS_FILE} in {out}: the report is built from the finished runs of "
            f"`tinysub experiment paper --out {out}`; run that first"
        )
    # Tuning runs are scored on the tuning split: they chose the lrs (tuning.json shows them)
    # and never enter a table of dev scores.
    records = [r for r in read_runs(out) if _usable(r) and r.get("phase") != "tune"]
    notes: list[str] = []
    raw = _read_json(out / "config.json", notes, "settings below are defaults or from the runs")
    phases = _read_json(out / "phases.json", notes, "no wall-clock per phase")
    d90 = _read_json(out / "d90.json", notes, "the d90 section is empty")
    return Results(records, config_with_defaults(raw, records), phases, d90, notes, out)


# ============================================================================ selectors
def _mode(r: Record) -> str:
    return r.get("mode") or (r.get("variant") if r.get("variant") in MODES else "delta")


def _layerwise(r: Record) -> bool:
    return r.get("scope", "layer") == "layer" and not r.get("said")


def is_full(r: Record) -> bool:
    return r["method"] == "full" and r.get("variant", "-") in ("-", None)


def is_freeze(r: Record) -> bool:
    return r["method"] == "freeze"


def random_at(dim: int) -> Selector:
    return lambda r: r["method"] == "random" and r.get("dim") == dim and _layerwise(r)


def intrinsic_at(dim: int, mode: str = "delta") -> Selector:
    # The variant of an intrinsic run is its mode; the theta-lr check runs ("delta-lr0.01")
    # are kept out of every table but their own.
    return lambda r: (
        r["method"] == "intrinsic"
        and r.get("dim") == dim
        and _mode(r) == mode
        and r.get("variant", mode) == mode
        and _layerwise(r)
    )


def intrinsic_lr(dim: int, lr: float) -> Selector:
    return lambda r: (
        r["method"] == "intrinsic"
        and r.get("dim") == dim
        # "-plain": the paper's rule (plain V theta); older reports ran the lr alone.
        and r.get("variant") in (f"delta-lr{lr:g}-plain", f"delta-lr{lr:g}")
    )


def transfer_from(source: str, dim: int) -> Selector:
    def sel(r: Record) -> bool:
        came = r.get("basis_from") or str(r.get("variant", "")).removeprefix("from-")
        return r["method"] == "transfer" and came == source and r.get("dim") == dim

    return sel


def method_at(method: str, dim: int | None) -> Selector:
    return lambda r: r["method"] == method and (dim is None or r.get("dim") == dim)


def disabled(kind: str) -> Selector:
    return lambda r: r["method"] == "full" and r.get("variant") == f"disable-{kind}"


def _outlier_value(key: str) -> Value:
    return lambda r: (r.get("outliers") or {}).get(key)


# ============================================================================ markdown
@dataclass
class Finding:
    key: str
    claim: str
    rule: str
    verdict: str
    measured: str = ""
    paper: str = ""
    reason: str = ""

    def __post_init__(self) -> None:
        if self.verdict == NOT_RUN:
            self.measured = ""  # nothing measured: the table shows "–"

    def markdown(self) -> str:
        head = f"**Verdict {self.key} ({self.claim}): {self.verdict}.**"
        if self.measured:
            head += f" Measured: {self.measured}."
        if self.paper:
            head += f" Paper: {self.paper}."
        lines = [head]
        if self.verdict != HOLDS:
            lines.append(
                f"Likely reason: {self.reason or 'no simple cause visible in the numbers'}."
            )
        return "\n\n".join(lines)


@dataclass
class Section:
    title: str
    body: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    def markdown(self) -> str:
        parts = [f"## {self.title}", *self.body, *(f.markdown() for f in self.findings)]
        return "\n\n".join(p for p in parts if p)


def md_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def task_label(task: str) -> str:
    column = paper.analog_column(task)
    return f"{task} ({column})" if column != "Avg." else f"{task} (paper Avg.)"


def _avg_cell(res: Results, stats: Mapping[str, Stat]) -> str:
    avg = average(stats)
    if avg is None:
        return DASH
    return _pts(avg) + ("" if len(stats) == len(res.tasks) else f" ({len(stats)}/{len(res.tasks)})")


def our_rows(res: Results, rows: Mapping[str, Mapping[str, Stat]]) -> list[list[str]]:
    """label | one cell per task | Avg. (mean over tasks, '(k/n)' when tasks are missing)."""
    return [
        [label, *(res.fmt(stats.get(t)) for t in res.tasks), _avg_cell(res, stats)]
        for label, stats in rows.items()
    ]


def _paper_avg(row: Mapping[str, float]) -> tuple[float, str]:
    if "Avg." in row:
        return row["Avg."], ""
    return statistics.fmean(row[g] for g in paper.GLUE), "*"


def paper_rows(res: Results, rows: Mapping[str, Mapping[str, float]]) -> list[list[str]]:
    """The paper's rows over our task columns (each task's GLUE analog); '*' marks a mean of
    the paper's eight columns computed here (the paper prints no average for that table)."""
    out = []
    for label, row in rows.items():
        cells = []
        for t in res.tasks:
            value, column = paper_value_cell(row, t)
            cells.append(value + ("*" if column.startswith("mean") else ""))
        avg, mark = _paper_avg(row)
        out.append([f"paper {label}", *cells, f"{avg:.2f}{mark}"])
    return out


def paper_value_cell(row: Mapping[str, float], task: str) -> tuple[str, str]:
    value, column = paper.paper_value(row, task)
    return f"{value:.2f}", column


PAPER_COLUMNS_NOTE = (
    "Paper rows: each task's GLUE analog (rotten_tomatoes → SST-2, vader_movies → STS-B, "
    "sms_spam → CoLA); trec6 has none and shows the paper's average. `*`: mean of the paper's "
    "eight columns, computed here (that table prints no average). Scores ×100, mean ± std "
    "over seeds (sample std); `(n=k)` when a cell has k runs instead of one per seed; "
    "`(k/n)` after an average: over k of the n tasks only."
)


def _paper_gap(table: Mapping, model: str, a: str, b: str) -> float:
    return _paper_avg(table[model][a])[0] - _paper_avg(table[model][b])[0]


def _paper_count(table: Mapping, model: str, a: str, b: str) -> str:
    wins = sum(table[model][a][g] > table[model][b][g] for g in paper.GLUE)
    return f"{wins}/{len(paper.GLUE)}"


def _median(records: Sequence[Record], key: str) -> float | None:
    values = [r[key] for r in records if _finite(r.get(key))]
    return statistics.median(values) if values else None


def _int(x: float | None) -> str:
    return DASH if x is None else f"{int(round(x)):,}"


def _gaps_by_task(a: Mapping[str, Stat], b: Mapping[str, Stat]) -> dict[str, float]:
    return {t: 100 * (a[t].mean - b[t].mean) for t in a if t in b}


def _list(values: Mapping[str, float], signed: bool = False) -> str:
    return ", ".join(f"{t} {_pts(v, signed)}" for t, v in values.items())


def _noise_hint(gap: float | None, a: Mapping[str, Stat], b: Mapping[str, Stat]) -> str:
    noise = seed_noise(a, b)
    if gap is None or noise is None or abs(gap) > noise:
        return ""
    return f"the gap ({_pts(gap)} points) is within seed noise (typical seed std {_pts(noise)})"


def _still_hint(res: Results, tasks: Iterable[str] | None = None, bar: float = 2.0) -> str:
    """Tasks where freezing the encoder is already within `bar` points of full."""
    full, freeze = res.per_task(is_full), res.per_task(is_freeze)
    gaps = _gaps_by_task(full, freeze)
    still = {t: g for t, g in gaps.items() if g < bar and (tasks is None or t in tasks)}
    if not still:
        return ""
    which = "this task" if len(still) == 1 else "these tasks"
    return f"the encoder barely needs to move on {which}: full − freeze = {_list(still)} points"


def _losses(gaps: Mapping[str, float], what: str) -> str:
    """Non-wins of a comparison, ties (identical scores) named apart from real losses."""
    tied = [t for t, g in gaps.items() if abs(g) < 1e-9]
    below = {t: g for t, g in gaps.items() if g <= -1e-9}
    return _reason(
        f"identical scores on {', '.join(tied)}" if tied else "",
        f"{what} on {_list(below, True)} points" if below else "",
    )


def _reason(*hints: str) -> str:
    return "; ".join(h for h in hints if h)


# ============================================================================ setup
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
    values = sorted({r[key] for r in recs if _finite(r.get(key))})
    return " / ".join(str(v) for v in values) if values else DASH


def _total_wall(res: Results) -> float | None:
    walls = [p.get("wall_seconds") for p in res.phases.values() if isinstance(p, dict)]
    walls = [w for w in walls if _finite(w)]
    return sum(walls) if walls else None


# ============================================================================ Table 1
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
        return _int(_median(recs, "full_space_params")) + " (all)" if recs else DASH
    return _int(_median(recs, "free_params")) if recs else DASH


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
        measured=f"mean full − intrinsic = {_pts(gap)} points over "
        f"{len(_gaps_by_task(full, intrinsic))} tasks",
        paper=f"BERT {_paper_gap(paper.TABLE1, 'BERT', 'full', 'intrinsic'):.1f}, "
        f"RoBERTa {_paper_gap(paper.TABLE1, 'RoBERTa', 'full', 'intrinsic'):.1f} points",
    )
    if gap is None:
        f.reason = f"needs full and intrinsic (dim {res.cfg['dim']}) runs of the same task"
        return f
    gaps = _gaps_by_task(full, intrinsic)
    f.reason = _reason(
        f"per task: {_list(gaps)} points",
        _recovered(full, intrinsic, freeze),
        _still_hint(res, gaps),
        _noise_hint(gap, full, intrinsic),
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
        return f"the subspace scores below freeze by {_pts(-got)} points on average"
    return (
        f"the subspace closes {100 * got / span:.0f}% of the {_pts(span)}-point full − freeze gap"
    )


def _t1b(res: Results, intrinsic: dict, random: dict) -> Finding:
    share = share_above(intrinsic, random)
    gaps = _gaps_by_task(intrinsic, random)
    f = Finding(
        "T1b",
        "intrinsic beats random",
        "intrinsic > random (same dim) on all tasks → holds; on at least half → partly",
        verdict(share, 1.0, 0.5),
        measured=f"intrinsic > random on {sum(g > 0 for g in gaps.values())} of {len(gaps)} "
        f"tasks, mean gap {_pts(mean_gap(intrinsic, random), True)} points",
        paper=f"BERT {_paper_count(paper.TABLE1, 'BERT', 'intrinsic', 'random')}, RoBERTa "
        f"{_paper_count(paper.TABLE1, 'RoBERTa', 'intrinsic', 'random')} tasks",
    )
    if share is None:
        f.reason = "needs intrinsic and random runs at the same dim"
        return f
    losing = {t: g for t, g in gaps.items() if g <= 0}
    f.reason = _reason(
        _losses(losing, "random above intrinsic"),
        _still_hint(res, losing),
        _noise_hint(mean_gap(intrinsic, random), intrinsic, random),
    )
    return f


def _t1c(res: Results, full: dict, freeze: dict) -> Finding:
    gap = mean_gap(full, freeze)
    f = Finding(
        "T1c",
        "freeze well below full",
        "mean over tasks of (full − freeze) ≥ 5 points → holds; else does not hold",
        verdict(gap, 5),
        measured=f"mean full − freeze = {_pts(gap)} points",
        paper=f"BERT {_paper_gap(paper.TABLE1, 'BERT', 'full', 'freeze'):.1f}, "
        f"RoBERTa {_paper_gap(paper.TABLE1, 'RoBERTa', 'full', 'freeze'):.1f} points",
    )
    f.reason = (
        _reason(_still_hint(res, bar=5.0), _noise_hint(gap, full, freeze))
        if gap is not None
        else "needs full and freeze runs of the same task"
    )
    return f


# ============================================================================ Figure 2
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
                _pts(v) + (" (own)" if src == tgt and v is not None else "")
                for v, tgt in zip(line, res.tasks, strict=True)
            ),
            _pts(_mean_or_none(v for v in line if v is not None)),
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
        _figure_line(
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
    f.reason = _reason(
        _losses(worse, "transfer below random"),
        _still_hint(res, {t for _, t in wins}),
    )
    return f


def _figure_line(
    res: Results, draw: bool, name: str, label: str, has_data: bool, plot: Callable
) -> str:
    if not has_data:
        return f"{label}: not drawn, no runs yet."
    if not draw or res.out_dir is None:
        return f"{label}: not drawn (figures off)."
    plot(res.out_dir / name)
    return f"![{label}]({name})"


# ============================================================================ Table 2
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
        measured=f"mean full − unified = {_pts(gap)} points",
        paper=f"BERT {_paper_gap(paper.TABLE2, 'BERT', 'full', 'unified'):.1f}, RoBERTa "
        f"{_paper_gap(paper.TABLE2, 'RoBERTa', 'full', 'unified'):.1f} points",
    )
    f.reason = (
        _reason(
            f"per task: {_list(_gaps_by_task(s['full'], s['unified']))} points",
            f"the unified basis has dim {res.cfg['unified_dim']} against Table 1's {res.cfg['dim']}"
            if res.cfg["unified_dim"] < res.cfg["dim"]
            else "",
            _noise_hint(gap, s["full"], s["unified"]),
        )
        if gap is not None
        else "needs full and unified runs"
    )
    return f


def _share_finding(
    res: Results, key: str, claim: str, a: dict, b: dict, paper_text: str
) -> Finding:
    share, gaps = share_above(a, b), _gaps_by_task(a, b)
    f = Finding(
        key,
        claim,
        "on all tasks → holds; on at least half → partly",
        verdict(share, 1.0, 0.5),
        measured=f"{sum(g > 0 for g in gaps.values())} of {len(gaps)} tasks, mean margin "
        f"{_pts(mean_gap(a, b), True)} points",
        paper=paper_text,
    )
    losing = {t: g for t, g in gaps.items() if g <= 0}
    f.reason = (
        _reason(
            _losses(losing, "fails"),
            _still_hint(res, losing),
            _noise_hint(mean_gap(a, b), a, b),
        )
        if share is not None
        else "the runs it compares are not in runs.jsonl yet"
    )
    return f


def _t2b(res: Results, s: dict) -> Finding:
    text = (
        f"BERT {_paper_count(paper.TABLE2, 'BERT', 'zeroshot', 'random')}, RoBERTa "
        f"{_paper_count(paper.TABLE2, 'RoBERTa', 'zeroshot', 'random')} tasks"
    )
    return _share_finding(res, "T2b", "zeroshot beats random", s["zeroshot"], s["random"], text)


def _t2c(res: Results, s: dict) -> Finding:
    text = (
        f"BERT {_paper_count(paper.TABLE2, 'BERT', 'unified', 'zeroshot')}, RoBERTa "
        f"{_paper_count(paper.TABLE2, 'RoBERTa', 'unified', 'zeroshot')} tasks"
    )
    return _share_finding(res, "T2c", "zeroshot below unified", s["unified"], s["zeroshot"], text)


# ============================================================================ Table 3
def encoder_size(res: Results) -> int | None:
    """Encoder parameters, from any subspace run's outlier summary (count / fraction)."""
    for r in res.records:
        o = r.get("outliers") or {}
        count, frac = o.get("total_count"), o.get("total_fraction")
        if _finite(count) and _finite(frac) and frac > 0:
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


# ============================================================================ outliers
def section_outliers(res: Results, draw: bool) -> Section:
    dim = res.cfg["dim"]
    intr, rnd = intrinsic_at(dim), random_at(dim)
    cols = [
        ("3σ fraction (%)", "total_fraction", 100.0, 2),
        ("excess over Gaussian", "excess_mean", 1.0, 2),
        ("excess kurtosis", "kurtosis_mean", 1.0, 1),
    ]
    rows = []
    for t in res.tasks:
        cells = []
        for _, key, scale, digits in cols:
            for sel in (intr, rnd):
                s = res.stat(t, sel, _outlier_value(key))
                cells.append(fmt(s, res.n_seeds, scale, digits))
        rows.append([t, *cells])
    header = ["task"] + [f"{kind} {c[0]}" for c in cols for kind in ("intrinsic", "random")]
    gauss = paper.GAUSSIAN_3SIGMA_FRACTION
    body = [
        f"Outlier dimensions of V θ at dim {dim} (mean ± std over seeds). A Gaussian puts "
        f"{gauss:.2%} of its entries beyond 3σ, so the count alone does not show spikes: "
        "'excess' is the count over that Gaussian expectation (1 = Gaussian), kurtosis the "
        f"heavy tail (0 = Gaussian). Paper: about {paper.OUTLIER_FRACTION:.1%} of encoder "
        "parameters are 3σ outliers in the intrinsic subspace.",
        md_table(header, rows),
        _table4(res),
        _fig4(res, draw),
    ]
    return Section("Outlier dimensions (Table 4, Figure 4)", body, [_f4(res)])


def _first_with(res: Results, sel: Selector, filename: str) -> Record | None:
    """The first-seed run of the first task (then later seeds) whose folder has `filename`."""
    for seed in res.seeds:
        for t in res.tasks:
            for r in res.select(sel, t):
                if r.get("seed") == seed and _has(r, filename):
                    return r
    return None


def _has(r: Record, filename: str) -> bool:
    run_dir = r.get("run_dir")
    return bool(run_dir) and os.path.exists(os.path.join(run_dir, filename))


def _table4(res: Results) -> str:
    first = res.seeds[0]
    intr = intrinsic_at(res.cfg["dim"])
    source = _first_with(res, lambda r: intr(r) and r.get("seed") == first, "outliers.json")
    if source is None:
        return (
            f"Table 4 (positions): not available, no intrinsic run (dim {res.cfg['dim']}, seed "
            f"{first}) still has its outliers.json in its run folder."
        )
    try:
        table4 = json.loads(Path(source["run_dir"], "outliers.json").read_text()).get("table4")
    except (OSError, json.JSONDecodeError, AttributeError):
        table4 = None
    if not table4:
        return f"Table 4 (positions): {source['run_dir']}/outliers.json has no table4."
    ours = [
        [row["component"], ", ".join(map(str, row["layers"])), ", ".join(map(str, row["counts"]))]
        for row in table4
    ]
    theirs = [
        [row["component"], ", ".join(map(str, row["layers"])), ", ".join(map(str, row["counts"]))]
        for row in paper.TABLE4_BERT
    ]
    return "\n\n".join(
        [
            f"Table 4: positions of each layer's top 10 outliers, intrinsic run `{source['id']}`:",
            md_table(["component", "layers", "outliers per layer"], ours),
            "Paper (BERT on MRPC, layers numbered from 1):",
            md_table(["component", "layers", "outliers per layer"], theirs),
        ]
    )


def _profiles(r: Record | None) -> dict[str, Any] | None:
    if r is None or not _has(r, "outliers.npz"):
        return None
    from worker.finetune.outliers import load_arrays

    try:
        arrays = load_arrays(r["run_dir"])
    except (NotFound, OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None
    return {layer: a["profile"] for layer, a in arrays.items() if "profile" in a} or None


def _fig4(res: Results, draw: bool) -> str:
    dim = res.cfg["dim"]
    intr = _first_with(res, intrinsic_at(dim), "outliers.npz")
    if intr is None:
        return "Figure 4: not drawn, no intrinsic run folder with outliers.npz is left."
    rnd = next(
        (r for r in res.select(random_at(dim), intr["task"]) if r.get("seed") == intr["seed"]),
        None,
    )
    panels = {}
    for kind, r in (("intrinsic", intr), ("random", rnd)):
        prof = _profiles(r)
        if prof is not None:
            panels[f"{kind} ({r['task']}, seed {r['seed']})"] = prof
    return _figure_line(
        res,
        draw,
        FIG4,
        "Figure 4",
        bool(panels),
        lambda p: figures.outlier_profiles(panels, p, f"max |V θ| per bin, dim {dim}"),
    )


def _f4(res: Results) -> Finding:
    dim = res.cfg["dim"]
    value = _outlier_value("excess_mean")
    intr = res.per_task(intrinsic_at(dim), value)
    rnd = res.per_task(random_at(dim), value)
    common = [t for t in intr if t in rnd]
    wins = [t for t in common if intr[t].mean > 1.5 * rnd[t].mean]
    share = len(wins) / len(common) if common else None
    f = Finding(
        "F4",
        "outliers appear in the intrinsic subspace, not the random one",
        "intrinsic excess (3σ count / Gaussian expectation) > 1.5 × random's on all tasks → "
        "holds; on some → partly",
        verdict(share, 1.0, 1 / len(common) if common else None),
        measured=f"on {len(wins)} of {len(common)} tasks",
        paper="outlier patterns in every layer with the intrinsic basis, none with a random one",
    )
    if share is None:
        f.reason = "needs intrinsic and random runs with their outlier summaries"
        return f
    pairs = ", ".join(f"{t} {intr[t].mean:.2f} vs {rnd[t].mean:.2f}" for t in common)
    f.reason = _reason(
        f"excess intrinsic vs random: {pairs}",
        _tail_hint(statistics.fmean(intr[t].mean for t in common)),
    )
    return f


def _tail_hint(excess: float) -> str:
    if excess < 0.8:
        return (
            "the intrinsic update has fewer 3σ entries than a Gaussian (excess < 1, a light "
            "tail): no spikes at this dim and step budget"
        )
    if excess < 1.2:
        return (
            "the intrinsic update's 3σ count is close to a Gaussian's (excess ≈ 1): no spikes "
            "at this dim and step budget"
        )
    return ""


# ============================================================================ Tables 5/6
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
    avg_row = ["Avg.", *(_avg_cell(res, stats[d]) for d in dims)]
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
        _figure_line(
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
    text = ", ".join(f"dim {d}: {_pts(m)}" for d, m in means.items())
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
    f.reason = _reason(_noise_hint(mean_gap(hi, lo), hi, lo), _still_hint(res, common, bar=2.0))
    return f


# ============================================================================ new: scope, modes
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
    params = [_int(_median(res.select(sel), "free_params")) for sel in columns.values()]
    rows = [[t, *(res.fmt(s.get(t)) for s in stats.values())] for t in res.tasks]
    rows.append(["Avg.", *(_avg_cell(res, s) for s in stats.values())])
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
    wins = sum(g > 0 for g in _gaps_by_task(a, b).values())
    n = len(_gaps_by_task(a, b))
    lead, lag = (name_a, name_b) if gap > 0 else (name_b, name_a)
    noise = _noise_hint(gap, a, b)
    return (
        f"Outcome: {lead} beats {lag} {what} by {_pts(abs(gap))} points on average "
        f"({name_a} higher on {wins} of {n} tasks)" + (f"; {noise}." if noise else ".")
    )


def section_modes(res: Results) -> Section:
    dim = res.cfg["modes_dim"]
    stats = {m: res.per_task(intrinsic_at(dim, m)) for m in MODES}
    rows = [[t, *(res.fmt(stats[m].get(t)) for m in MODES)] for t in res.tasks]
    rows.append(["Avg.", *(_avg_cell(res, stats[m]) for m in MODES)])
    avgs = {m: average(s) for m, s in stats.items() if s}
    if len(avgs) >= 2:
        best = sorted(avgs, key=avgs.get, reverse=True)
        outcome = (
            f"Outcome: {best[0]} has the best average ({_pts(avgs[best[0]])}), "
            f"{_pts(avgs[best[0]] - avgs[best[1]])} points above {best[1]}."
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
    rows.append(["Avg.", *(_avg_cell(res, st) for st in stats.values())])
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


# ============================================================================ d90
LAYERWISE_D90 = ("intrinsic", "random")
D90_LABELS = {
    "fastfood": "fastfood (DID, global d)",
    "said": "SAID (global d)",
    "intrinsic": "intrinsic (d per layer)",
    "random": "random (d per layer)",
}


def d90_searches(res: Results) -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for s in res.d90.get("searches") or []:
        if isinstance(s, dict) and s.get("task") and s.get("method"):
            out[(s["task"], s["method"])] = s
    return out


def dof(method: str, d: int | None, layers: int | None) -> int | None:
    """Degrees of freedom of a subspace of dim d: d per layer for layer-wise bases, d for a
    global one, plus one scale per layer for SAID."""
    if d is None:
        return None
    if method in LAYERWISE_D90:
        return d * layers if layers else None
    return d + (layers or 0) if method == "said" else d


def _d90_cell(s: dict[str, Any] | None, layers: int | None) -> str:
    if s is None:
        return DASH
    if s.get("d90") is None:
        return f"> {s['max_tried']}" if s.get("max_tried") else DASH
    k = dof(s["method"], s["d90"], layers)
    return f"{s['d90']} ({_int(k)} dof)"


def _d90_methods(res: Results, searches: Mapping) -> list[str]:
    listed = list(res.cfg["d90_methods"])
    return listed + sorted({m for _, m in searches} - set(listed))


def _target(res: Results, searches: Mapping, task: str) -> float | None:
    for (t, _), s in searches.items():
        if t == task and _finite(s.get("target")):
            return s["target"]
    full = (res.d90.get("full") or {}).get(task)
    return res.cfg["d90_fraction"] * full if _finite(full) else None


def freeze_reaches(res: Results, searches: Mapping) -> dict[str, bool]:
    """task -> whether the frozen encoder alone already scores at least the d90 target."""
    out = {}
    for t in res.tasks:
        target, frozen = _target(res, searches, t), (res.d90.get("freeze") or {}).get(t)
        if target is not None and _finite(frozen):
            out[t] = frozen >= target
    return out


def section_d90(res: Results, draw: bool) -> Section:
    searches, layers = d90_searches(res), res.cfg.get("layers")
    methods = _d90_methods(res, searches)
    reach = freeze_reaches(res, searches)
    full, frozen = res.d90.get("full") or {}, res.d90.get("freeze") or {}
    rows = []
    for t in res.tasks:
        target = _target(res, searches, t)
        rows.append(
            [
                t,
                _pts(100 * full[t]) if _finite(full.get(t)) else DASH,
                _pts(100 * target) if target is not None else DASH,
                _pts(100 * frozen[t]) if _finite(frozen.get(t)) else DASH,
                {True: "yes", False: "no"}.get(reach.get(t), DASH),
                *(_d90_cell(searches.get((t, m)), layers) for m in methods),
            ]
        )
    labels = (D90_LABELS.get(m, m) for m in methods)
    header = ["task", "full", "target", "freeze", "freeze ≥ target", *labels]
    body = [
        f"d90: the smallest d whose score (mean over seeds {res.cfg['d90_seeds']}) reaches "
        f"{res.cfg['d90_fraction']:.0%} of full, found by bisection on a grid. Cells: d90 "
        "(degrees of freedom: d × layers for the layer-wise intrinsic and random bases, d for "
        f"fastfood, d + layers for SAID); '> m': not reached up to d = m. The h = {H} ensemble "
        "vectors count once (the model sees only their mean).",
        md_table(header, rows) if searches or full else "No d90 searches in d90.json yet.",
        _freeze_note(reach),
        "Paper numbers (random subspaces, Aghajanyan et al. 2021): "
        + "; ".join(
            f"{a['model']} {a['task']}: d90 = {a['d90']} ({a['source']})" for a in paper.AGHAJANYAN
        )
        + ". Both are hundreds to thousands of parameters.",
        _d90_figure(res, draw, searches),
    ]
    return Section("d90 (Aghajanyan et al. 2021)", body, [_d90_finding(res, searches, reach)])


def _freeze_note(reach: Mapping[str, bool]) -> str:
    tasks = [t for t, ok in reach.items() if ok]
    if not tasks:
        return ""
    return (
        f"Freeze alone (no encoder update; embeddings and head still train) already reaches "
        f"the target on {', '.join(tasks)}: there every d90 is trivially at most the smallest "
        "grid point, and the d90 numbers say nothing about the subspaces."
    )


def _d90_figure(res: Results, draw: bool, searches: Mapping) -> str:
    curves: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for (t, m), s in searches.items():
        points = [
            (p["d"], 100 * p["score"])
            for p in s.get("points") or []
            if p.get("d") and _finite(p.get("score"))
        ]
        if points:
            curves.setdefault(t, {})[m] = points
    targets = {t: 100 * v for t in curves if (v := _target(res, searches, t)) is not None}
    return _figure_line(
        res,
        draw,
        FIG_D90,
        "d90 searches",
        bool(curves),
        lambda p: figures.d90_plot(curves, targets, p, "Score against d", D90_LABELS),
    )


def d90_pairs(
    res: Results, searches: Mapping, reach: Mapping[str, bool]
) -> tuple[dict[str, tuple[float, float]], list[str]]:
    """task -> (intrinsic dof, fastfood dof), inf where the target was not reached, for the
    tasks with both searches; tasks where freeze alone reaches the target are set apart (there
    every d90 is its grid's smallest point, which compares grids, not subspaces)."""
    layers = res.cfg.get("layers")
    pairs, trivial = {}, []
    for t in res.tasks:
        a, b = searches.get((t, "intrinsic")), searches.get((t, "fastfood"))
        if a is None or b is None:
            continue
        if reach.get(t):
            trivial.append(t)
            continue
        pairs[t] = (
            dof("intrinsic", a.get("d90"), layers) or math.inf,
            dof("fastfood", b.get("d90"), layers) or math.inf,
        )
    return pairs, trivial


def _d90_finding(res: Results, searches: Mapping, reach: Mapping[str, bool]) -> Finding:
    pairs, trivial = d90_pairs(res, searches, reach)
    wins = [t for t, (a, b) in pairs.items() if a < b]
    share = len(wins) / len(pairs) if pairs else (0.0 if trivial else None)
    f = Finding(
        "d90",
        "the trajectory subspace needs far fewer parameters than a random one",
        "intrinsic d90 dof < fastfood d90 dof ('not reached' = ∞, so a task where neither "
        "reaches counts against) on all tasks with both searches where freeze alone stays "
        "below the target → holds; on some → partly",
        verdict(share, 1.0, 1 / len(pairs) if pairs else None),
        measured=f"intrinsic needs fewer on {len(wins)} of {len(pairs)} tasks"
        + (f" ({len(trivial)} set apart: freeze reaches the target)" if trivial else ""),
        paper="random subspaces: d90 of hundreds to thousands (200 for RoBERTa on MRPC)",
    )
    if share is None:
        f.reason = "needs intrinsic and fastfood d90 searches of the same task"
        return f
    lost = {t: v for t, v in pairs.items() if t not in wins}
    f.reason = _reason(
        "intrinsic vs fastfood dof: "
        + ", ".join(f"{t} {_k(a)} vs {_k(b)}" for t, (a, b) in lost.items())
        if lost
        else "",
        f"freeze alone reaches the target on {', '.join(trivial)}, so every method's d90 there "
        "sits at its smallest grid point and those tasks cannot show the claim"
        if trivial
        else "",
    )
    return f


def _k(x: float) -> str:
    return "not reached" if math.isinf(x) else f"{int(x):,}"


# ============================================================================ wall-clock
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
            _minutes(sum(x for x in run_s if _finite(x)) if run_s else None),
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
    return f"{seconds / 60:.1f}" if _finite(seconds) else DASH


def _per_method(res: Results) -> list[list[str]]:
    groups: dict[str, list[Record]] = {}
    for r in res.records:
        label = r["method"] + ("+said" if r.get("said") else "")
        groups.setdefault(label, []).append(r)
    rows = []
    for label, recs in sorted(groups.items()):
        sps, sec = _median(recs, "seconds_per_step"), _median(recs, "seconds")
        rows.append(
            [
                label,
                str(len(recs)),
                DASH if sps is None else f"{sps:.3f}",
                DASH if sec is None else f"{sec:.1f}",
            ]
        )
    return rows


# ============================================================================ assembly
def _headline(res: Results, t1a: Finding, t1b: Finding) -> str:
    avgs = {m: average(s) for m, s in table1_stats(res).items()}
    if all(v is None for v in avgs.values()):
        first = f"Table 1 (dim {res.cfg['dim']}) has no finished runs yet."
    else:
        parts = ", ".join(f"{m} {_pts(avgs[m])}" for m in T1_METHODS)
        first = (
            f"Table 1 averages over {len(res.tasks)} tasks at dim {res.cfg['dim']} (×100, mean "
            f"over tasks of the seed means): {parts}."
        )
    if t1a.verdict == NOT_RUN:
        second = "The main claim (intrinsic ≈ full, T1a) cannot be judged yet: not run yet."
    else:
        says = {HOLDS: "holds", PARTLY: "partly holds", FAILS: "does not hold"}[t1a.verdict]
        second = (
            f"The main claim, that fine-tuning in the tiny intrinsic subspace comes within 2 "
            f"points of full (T1a), {says} here ({t1a.measured.removeprefix('mean ')}; "
            f"paper {t1a.paper}), and intrinsic beats random: {t1b.verdict} (T1b)."
        )
    return f"{first} {second}"


def headline(out_dir: str | os.PathLike) -> str:
    """The report's two-sentence summary of Table 1 and the main claim."""
    res = load_results(out_dir)
    t1a, t1b, _ = t1_findings(res)
    return _headline(res, t1a, t1b)


def _verdict_table(findings: Sequence[Finding]) -> str:
    rows = [
        [f.key, f.claim, f"**{f.verdict}**", f.measured or DASH, f.paper or DASH] for f in findings
    ]
    return md_table(["finding", "claim", "verdict", "measured", "paper"], rows)


def _rules(findings: Sequence[Finding]) -> str:
    lines = [f"- **{f.key}** ({f.claim}): {f.rule}." for f in findings]
    return (
        "Each verdict is computed from the means above (scores ×100, differences in points, "
        "means over the tasks that have both runs); 'not run yet' when the runs are missing.\n\n"
        + "\n".join(lines)
    )


def render(res: Results, draw: bool = True) -> str:
    # report_diagnostics builds on this module's tables and findings: imported here, not above.
    from experiments.report_diagnostics import diagnostic_sections

    sections = [
        section_setup(res),
        section_table1(res),
        section_fig2(res, draw),
        section_table2(res),
        section_table3(res),
        section_outliers(res, draw),
        section_ablation(res, draw),
        section_scope(res),
        section_modes(res),
        section_d90(res, draw),
        section_theta_lr(res),
        # Tuning, spectrum, oracle, curves, theta vs extent, runs below freeze, outlier
        # controls with T3 and T3c (experiments/report_diagnostics.py).
        *(diagnostic_sections(res, res.out_dir, draw) if res.out_dir else []),
        section_time(res),
    ]
    findings = [f for s in sections for f in s.findings]
    t1a, t1b = findings[0], findings[1]
    head = [
        "# Fine-tuning happens in tiny subspaces: reproduction report",
        "Zhang, Liu and Shao (ACL 2023), and the d90 of Aghajanyan et al. (2021), on our tasks "
        "and model. Generated by `experiments/report.py` from the files in this folder; every "
        "verdict follows a rule listed at the end.",
        "## Headline",
        _headline(res, t1a, t1b),
        "## Verdicts",
        _verdict_table(findings),
    ]
    tail = ["## Verdict rules", _rules(findings)]
    return "\n\n".join([*head, *(s.markdown() for s in sections), *tail]) + "\n"


def build_report(out_dir: str | os.PathLike, *, draw_figures: bool = True) -> Path:
    """Write DIR/report.md and the figures (PNG, in DIR) from DIR's files; return the
    report's path. Works on partial results; raises NotFound without DIR/runs.jsonl."""
    res = load_results(out_dir)
    path = Path(out_dir) / REPORT_FILE
    text = render(res, draw_figures)
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path
