"""Hand-written experiment folders for the diagnostics sections, and readers of their
markdown (a table row by its first cell, a section's findings by key)."""

from __future__ import annotations

import json
from pathlib import Path

from experiments.report.diagnostics.sections import diagnostic_sections
from experiments.report.results import Results, load_results

TASKS = ("rotten_tomatoes", "trec6")
SEEDS = (0, 1, 2)
PNG = b"\x89PNG\r\n\x1a\n"


def rec(method, task, seed, score, dim=None, variant="-", phase="table1", **extra) -> dict:
    return {
        "id": f"{method}/{task}/{variant}/d{dim or 0}/s{seed}/{extra.pop('tag', '')}",
        "phase": phase,
        "task": task,
        "method": method,
        "seed": seed,
        "dim": dim,
        "metric": "accuracy",
        "score": score,
        "variant": variant,
        "scope": "layer",
        "said": False,
        **extra,
    }


def make_dir(tmp_path: Path, records, **files) -> Results:
    """DIR with config.json, runs.jsonl and the named side files (a dict is written as JSON,
    a str as it is)."""
    (tmp_path / "config.json").write_text(json.dumps({"tasks": TASKS, "seeds": SEEDS}))
    lines = "".join(json.dumps(r) + "\n" for r in records)
    (tmp_path / "runs.jsonl").write_text(lines)
    for name, content in files.items():
        text = content if isinstance(content, str) else json.dumps(content)
        (tmp_path / f"{name}.json").write_text(text)
    return load_results(tmp_path)


def build(tmp_path: Path, records, draw: bool = False, **files) -> dict:
    res = make_dir(tmp_path, records, **files)
    return {s.title: s for s in diagnostic_sections(res, tmp_path, draw)}


def text(section) -> str:
    return section.markdown()


def row(markdown: str, first: str) -> list[str]:
    """The cells of the first table row whose first cell is `first`."""
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first:
            return cells
    raise AssertionError(f"no row {first!r} in:\n{markdown}")


def header(markdown: str, first: str) -> list[str]:
    return row(markdown, first)


def is_png(path: Path) -> bool:
    return path.exists() and path.read_bytes()[:8] == PNG


def freeze_runs(score=0.6):
    return [rec("freeze", t, s, score) for t in TASKS for s in SEEDS]


def disable_runs(scores: dict, jitter=(-0.01, 0.0, 0.01), held=1000) -> list[dict]:
    """full runs with each control held at zero: scores[mode] on every task, plus a per-seed
    jitter on the outlier run (so the per-seed gaps spread by 1 point)."""
    out = []
    for t in TASKS:
        for s, j in zip(SEEDS, jitter, strict=True):
            out.append(rec("full", t, s, scores.get("none", 0.9), phase="table1"))
            for mode, v in scores.items():
                if mode != "none":
                    extra = j if mode == "outlier" else 0.0
                    variant = f"disable-{mode}"
                    out.append(
                        rec("full", t, s, v + extra, None, variant, "disable", held_zero=held)
                    )
    return out


def findings(section) -> dict:
    return {f.key: f for f in section.findings}


BASE = {"none": 0.90, "random": 0.88, "outlier": 0.40, "ln_gains": 0.30}
KNOWLEDGE = {**BASE, "outlier_non_ln": 0.45, "random_matched": 0.87, "outlier_ln": 0.86}
BOTH = {**BASE, "outlier_non_ln": 0.60, "random_matched": 0.87, "outlier_ln": 0.50}
MECHANICS = {**BASE, "outlier_non_ln": 0.86, "random_matched": 0.87, "outlier_ln": 0.42}
NO_COLLAPSE = {**KNOWLEDGE, "outlier": 0.86}


def posthoc_file(scores: dict) -> dict:
    return {
        t: {str(s): {**scores, "counts": {"outlier": 500, "random": 500}} for s in SEEDS}
        for t in TASKS
    }
