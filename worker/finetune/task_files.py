"""The user's task files (CSV, JSONL): rows read, columns found, labels made into classes or
regression scores (see worker.finetune.data for the columns)."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence

from storage.errors import InvalidInput, NotFound

PROMPT_COLUMNS = ("prompt", "instruction", "question", "input")
RESPONSE_COLUMNS = ("response", "output", "answer", "completion")


def user_file(spec: str, problem: str | None) -> tuple:
    """(texts, labels, label names or None, problem, metric, path, text pairs or None) of a
    labeled CSV / JSONL file; `problem` None infers classification or regression."""
    kind, _, path = spec.partition(":")
    if kind not in ("csv", "jsonl"):
        path, kind = spec, "jsonl" if spec.endswith(".jsonl") else "csv"
    if not os.path.exists(path):
        raise NotFound(f"task file {path} does not exist")
    if kind == "csv":
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
    else:
        with open(path, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
    if not rows:
        raise InvalidInput(f"task file {path} has no examples")
    text_key = next((k for k in ("text", "sentence", "sentence1") if k in rows[0]), None)
    if text_key is None or "label" not in rows[0]:
        raise InvalidInput(f"{path} needs a 'text' (or 'sentence') and a 'label' column")
    pair_key = next((k for k in ("text_pair", "sentence2") if k in rows[0]), None)
    texts = [str(r[text_key]) for r in rows]
    pairs = [str(r[pair_key]) for r in rows] if pair_key else None
    raw = [r["label"] for r in rows]
    numbers = _as_numbers(raw)
    if problem is None:
        integral = numbers is not None and all(float(x).is_integer() for x in numbers)
        problem = "classification" if numbers is None or integral else "regression"
    if problem == "regression":
        if numbers is None:
            raise InvalidInput(f"{path}: a regression task needs numeric labels")
        return texts, numbers, None, "regression", "pearson", path, pairs
    if numbers is not None and all(float(x).is_integer() for x in numbers):
        names = tuple(str(int(x)) for x in sorted(set(numbers)))
        labels = [names.index(str(int(x))) for x in numbers]
    else:
        names = tuple(sorted({str(x) for x in raw}))
        labels = [names.index(str(x)) for x in raw]
    if len(names) < 2:
        raise InvalidInput(f"{path}: a classification task needs at least two labels")
    return texts, labels, names, "classification", "accuracy", path, pairs


def _as_numbers(raw: list) -> list[float] | None:
    try:
        return [float(x) for x in raw]
    except (TypeError, ValueError):
        return None


def read_rows(path: str, kind: str) -> list[dict]:
    """The rows of a CSV (`kind` "csv") or JSONL file, as dicts."""
    if kind == "csv":
        with open(path, encoding="utf-8", newline="") as f:
            return list(csv.DictReader(f))
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def find_column(
    rows: list[dict], path: str, given: str | None, candidates: Sequence[str]
) -> str | None:
    """The column `given` (refused when missing), else the first of `candidates` present."""
    if given is not None:
        if given not in rows[0]:
            raise InvalidInput(f"{path} has no column {given!r}; it has {sorted(rows[0])}")
        return given
    return next((k for k in candidates if k in rows[0]), None)
