"""The user's task files (CSV, JSONL, a local Hugging Face dataset): rows read, columns
found, labels made into classes or regression scores (see worker.finetune.data)."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence

from storage.errors import InvalidInput, NotFound
from worker.finetune.hf_datasets import dataset_rows

PROMPT_COLUMNS = ("prompt", "instruction", "question", "input")
RESPONSE_COLUMNS = ("response", "output", "answer", "completion")


def user_file(
    spec: str,
    problem: str | None,
    text_column: str | None = None,
    label_column: str | None = None,
) -> tuple:
    """(texts, labels, label names or None, problem, metric, path, text pairs or None) of a
    labeled CSV / JSONL file or local Hugging Face dataset (``hf:PATH[@SPLIT]``); `problem`
    None infers classification or regression; the columns default to text/sentence and label."""
    rows, path = task_rows(spec)
    text_key = find_column(rows, path, text_column, ("text", "sentence", "sentence1"))
    label_key = find_column(rows, path, label_column, ("label",))
    if text_key is None or label_key is None:
        raise InvalidInput(
            f"{path} needs a 'text' (or 'sentence') and a 'label' column, or name them with "
            f"--text-column / --label-column; it has {sorted(rows[0])}"
        )
    pair_key = next((k for k in ("text_pair", "sentence2") if k in rows[0]), None)
    texts = [str(r[text_key]) for r in rows]
    pairs = [str(r[pair_key]) for r in rows] if pair_key else None
    raw = [r[label_key] for r in rows]
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


def task_rows(spec: str) -> tuple[list[dict], str]:
    """(rows, path) of ``csv:PATH`` / ``jsonl:PATH`` / ``hf:PATH[@SPLIT]`` (a bare path ending
    in .jsonl is JSONL, any other a CSV); an empty file is refused."""
    kind, _, path = spec.partition(":")
    if kind == "hf":
        rows, path = dataset_rows(path)
        return rows, path
    if kind not in ("csv", "jsonl"):
        path, kind = spec, "jsonl" if spec.endswith(".jsonl") else "csv"
    if not os.path.exists(path):
        raise NotFound(f"task file {path} does not exist")
    rows = read_rows(path, kind)
    if not rows:
        raise InvalidInput(f"task file {path} has no examples")
    return rows, path


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
