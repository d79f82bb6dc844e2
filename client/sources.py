"""Rows to upload, from a local trajectory store, a folder of checkpoints, or arrays.

Each source yields `SourceRow(index, vectors, step, epoch, metrics)` one row at a time, so
uploading needs memory for one checkpoint, not the trajectory.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open

from storage.arrays import flatten_state
from storage.errors import InvalidInput, NotFound
from storage.layout import Layout, layout_from_state_dict
from storage.trajectory import TrajectoryStore

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass
class SourceRow:
    index: int
    vectors: Mapping[str, np.ndarray]  # group -> (D_g,) float32
    step: int | None = None
    epoch: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)


def store_rows(store: TrajectoryStore) -> Iterator[SourceRow]:
    for info in store.rows:
        vectors = {g: store.read_row(info.index, g) for g in store.layout.group_names}
        yield SourceRow(info.index, vectors, info.step, info.epoch, dict(info.metrics))


def _step_of(path: Path) -> int:
    m = re.search(r"(\d+)$", path.stem if path.is_file() else path.name)
    return int(m.group(1)) if m else -1


def checkpoint_files(folder: str | os.PathLike) -> list[Path]:
    """Weight files of a folder, in step order: `checkpoint-N/{model.safetensors,
    pytorch_model.bin}` (a transformers Trainer output dir) or `*.safetensors` files."""
    root = Path(folder)
    found = []
    for sub in sorted(root.glob("checkpoint-*"), key=_step_of):
        for name in WEIGHT_FILES:
            if (sub / name).is_file():
                found.append(sub / name)
                break
    if not found:
        found = sorted(root.glob("*.safetensors"), key=lambda p: (_step_of(p), p.name))
    if not found:
        raise NotFound(f"{folder} has no checkpoint-*/model.safetensors or *.safetensors files")
    return found


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint's state dict (safetensors as numpy; .bin through torch, weights only)."""
    path = Path(path)
    if path.is_dir():
        for name in WEIGHT_FILES:
            if (path / name).is_file():
                return load_state(path / name)
        raise NotFound(f"{path} has none of {list(WEIGHT_FILES)}")
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="np") as f:
                return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a dict
        except TypeError:  # bfloat16 has no numpy dtype: go through torch
            from safetensors.torch import load_file  # noqa: PLC0415 - torch: slow; client and CLI must not need it

            return load_file(str(path))
    import torch  # noqa: PLC0415 - torch: slow; client and CLI must not need it

    return torch.load(str(path), map_location="cpu", weights_only=True)


def in_layout_order(state: Mapping[str, Any], layout: Layout) -> dict[str, Any]:
    """The state dict re-ordered to the layout's parameter order.

    safetensors files store tensors sorted by name, not in model order, and a layout's hash
    covers the order; the layout's own order is the one the task was registered with.
    """
    theirs = layout_from_state_dict(state, layout.rule)
    prefixes = {g.name: g.prefix for g in theirs.groups}
    ordered: dict[str, Any] = {}
    for group in layout.groups:
        prefix = prefixes.get(group.name, group.prefix)
        for spec in group.params:
            if prefix + spec.name in state:
                ordered[prefix + spec.name] = state[prefix + spec.name]
    ordered.update((k, v) for k, v in state.items() if k not in ordered)
    return ordered


def checkpoint_rows(
    folder: str | os.PathLike, layout: Layout, base: str | os.PathLike | None = None
) -> Iterator[SourceRow]:
    """Row 0 from `base` (theta0) when given, then the folder's checkpoints in step order."""
    files = ([Path(base)] if base is not None else []) + checkpoint_files(folder)
    for i, path in enumerate(files):
        step = (
            0
            if (base is not None and i == 0)
            else _step_of(path.parent if path.name in WEIGHT_FILES else path)
        )
        state = in_layout_order(load_state(path), layout)
        yield SourceRow(i, flatten_state(state, layout), step=step if step >= 0 else None)


def array_rows(rows: Iterable[Mapping[str, Any]]) -> Iterator[SourceRow]:
    for i, vectors in enumerate(rows):
        yield SourceRow(
            i, {g: np.asarray(v, dtype=np.float32).reshape(-1) for g, v in vectors.items()}
        )


def rows_from(
    source: Any, layout: Layout, base: str | os.PathLike | None = None
) -> Iterator[SourceRow]:
    """Rows of a TrajectoryStore, a store path/URL, a checkpoint folder, or row dicts."""
    if isinstance(source, TrajectoryStore):
        source.layout.check_compatible(layout, "store layout")
        return store_rows(source)
    if isinstance(source, str | os.PathLike):
        if TrajectoryStore.exists(source):
            store = TrajectoryStore.open(source)
            layout.check_compatible(store.layout, "store layout")
            return store_rows(store)
        if Path(source).is_dir():
            return checkpoint_rows(source, layout, base)
        raise NotFound(f"{source} is neither a trajectory store nor a checkpoint folder")
    if isinstance(source, Iterable):
        return array_rows(source)
    raise InvalidInput(f"cannot upload rows from a {type(source).__name__}")
