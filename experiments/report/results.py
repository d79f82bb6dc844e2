"""What the report reads from DIR: runs.jsonl and the side files, with the config's gaps filled.

Why one loader: every section works on partial results, so the defaults (settings missing
from config.json, tasks and seeds taken from the runs) are decided once, here, and each section
only asks `Results` for the records and per-task statistics it needs. Only a missing
runs.jsonl is an error (there is nothing to report); a missing or unreadable config.json,
phases.json or d90.json is noted (`Results.notes`) and skipped.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from experiments.config import TASKS, PaperConfig
from experiments.ledger import RUNS_FILE, read_runs
from experiments.report.markdown import fmt
from experiments.report.stats import Stat, finite, stat
from storage.errors import NotFound

Record = dict[str, Any]
Selector = Callable[[Record], bool]
Value = Callable[[Record], Any]


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


_REQUESTED_DIM = re.compile(r"/d(\d+)/")


def at_requested_dim(records: Sequence[Record], notes: list[str]) -> list[Record]:
    """Runs asked for dim N whose basis held fewer directions (the kernels' rcond cut a
    vanishing one) stand in their dim-N cell, as the run that was asked for, with `columns`
    the directions they had; a note names them, so no cell hides it."""
    out, short = [], {}
    for r in records:
        m = _REQUESTED_DIM.search(str(r.get("id", "")))
        dim = r.get("dim")
        if m and isinstance(dim, int) and dim < int(m.group(1)):
            asked = int(m.group(1))
            r = {**r, "dim": asked, "columns": dim}
            short.setdefault((r["task"], r["method"], asked), dim)
        out.append(r)
    for (task, method, asked), had in sorted(short.items()):
        notes.append(
            f"{task} / {method} at dim {asked} trained in the {had} directions its basis holds "
            f"(the rest fell below rcond); it stands in the dim-{asked} cells."
        )
    return out


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
        cfg["seeds"] = sorted({int(r["seed"]) for r in records if finite(r.get("seed"))}) or [0]
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
    records = at_requested_dim(records, notes)
    raw = _read_json(out / "config.json", notes, "settings below are defaults or from the runs")
    phases = _read_json(out / "phases.json", notes, "no wall-clock per phase")
    d90 = _read_json(out / "d90.json", notes, "the d90 section is empty")
    return Results(records, config_with_defaults(raw, records), phases, d90, notes, out)
