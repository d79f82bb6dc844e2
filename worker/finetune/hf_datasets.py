"""Tasks as users hold them in Hugging Face `datasets`: ``hf:PATH[@SPLIT]``.

PATH is local, never a Hub name (nothing is fetched at run time):
- a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` (read with
  ``load_from_disk``; a DatasetDict takes SPLIT, default ``train``);
- a data file (.csv, .json, .jsonl, .parquet, .arrow), read with ``load_dataset`` and the
  matching builder;
- a folder ``load_dataset`` reads (data files, or a dataset script kept locally), SPLIT of it.

The rows come back as dicts, so the columns are found exactly as in a CSV/JSONL task (and named
with --text-column / --label-column / --prompt-column / --response-column). A ``ClassLabel``
column gives its class names, not its integer codes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from storage.errors import InvalidInput, NotFound

BUILDERS = {
    ".csv": "csv",
    ".json": "json",
    ".jsonl": "json",
    ".parquet": "parquet",
    ".arrow": "arrow",
}
SAVED_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


def parse_spec(spec: str) -> tuple[str, str | None]:
    """``PATH[@SPLIT]`` -> (PATH, SPLIT or None)."""
    path, at, split = spec.rpartition("@")
    if not at or not split or os.path.exists(spec):
        return spec, None
    return path, split


def dataset_rows(spec: str) -> tuple[list[dict[str, Any]], str]:
    """(rows as dicts, the path) of ``PATH[@SPLIT]``; see the module docstring."""
    try:
        import datasets  # noqa: PLC0415 - the finetune extra's optional datasets, only here
    except ImportError as exc:  # pragma: no cover - an install without datasets
        raise InvalidInput(
            "hf: tasks need the `datasets` package (pip install tinysub[finetune])"
        ) from exc
    path, split = parse_spec(spec)
    if not os.path.exists(path):
        raise NotFound(
            f"dataset {path} does not exist here; hf: tasks read local datasets only (save a "
            "Hub dataset with Dataset.save_to_disk, or point at its data files)"
        )
    data = _load(datasets, path, split)
    rows = data.to_list()
    if not rows:
        raise InvalidInput(f"dataset {spec} has no examples")
    names = {
        col: feature.names
        for col, feature in data.features.items()
        if isinstance(feature, datasets.ClassLabel)
    }
    for row in rows:
        for col, labels in names.items():
            if row[col] is not None and row[col] >= 0:
                row[col] = labels[row[col]]
    return rows, path


def _load(datasets: Any, path: str, split: str | None) -> Any:
    where = Path(path)
    if where.is_dir() and any((where / m).exists() for m in SAVED_MARKERS):
        data = datasets.load_from_disk(path)
    elif where.is_file():
        builder = BUILDERS.get(where.suffix.lower())
        if builder is None:
            raise InvalidInput(f"{path}: a data file must be one of {sorted(BUILDERS)}")
        data = datasets.load_dataset(builder, data_files=path, split=split or "train")
    else:
        data = datasets.load_dataset(path, split=split or "train")
    if isinstance(data, datasets.DatasetDict):
        want = split or "train"
        if want not in data:
            raise InvalidInput(f"{path} has splits {sorted(data)}, not {want!r}; add @SPLIT")
        data = data[want]
    return data
