"""Filling a trajectory store from saved checkpoints or numpy arrays, resumably.

Both ingesters work in two phases. `check` reads every row that is not committed yet and runs
every test a write would run (layout, finite values, dtype range) without writing; only then does
`write` create the store (if needed) and append the rows. So bad input leaves the store exactly as
it was. Rows the store already holds are re-sent through `write_row`, which accepts equal bytes
and raises `Conflict` on different ones: a resumed ingestion continues where the last one stopped
and proves the committed prefix is the same data. Memory: one row (all groups of one checkpoint,
float32) plus one tensor.

The training-time writer, `TrajectoryCallback`, lives in `storage.callback` (it needs
transformers); it is re-exported here lazily.

Modules: `ingest_rows` (the two phases every ingester shares), `ingest_arrays` (numpy arrays);
this module ingests checkpoint folders and re-exports the arrays API.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy.typing as npt

from storage.arrays import flatten_state
from storage.checkpoints import Checkpoint, Weights, folder_layout, list_checkpoints, weight_files
from storage.errors import InvalidInput, LayoutMismatch
from storage.ingest_arrays import flat_layout, ingest_arrays, load_arrays
from storage.ingest_rows import (
    IngestReport,
    Progress,
    Row,
    StoreOptions,
    ingest_rows,
    named_input,
    open_existing,
)
from storage.layout import Layout, build_layout
from storage.trajectory import TrajectoryStore

if TYPE_CHECKING:
    from storage.callback import TrajectoryCallback


def _checkpoint_row(ckpt: Checkpoint, layout: Layout) -> Row:
    def load() -> dict[str, npt.NDArray[Any]]:
        with Weights(ckpt.path) as weights:
            return flatten_state(weights, layout, weights.shapes, what=str(ckpt.path))

    return Row(str(ckpt.path), load, ckpt.step, ckpt.epoch, ckpt.metrics)


def _check_rule(store: TrajectoryStore, folder: Path, rule: str) -> None:
    """An explicit rule must group theta0 as the existing store is grouped."""
    with Weights(folder) as weights:
        asked = build_layout(weights.shapes, rule)
    sizes = {g.name: g.size for g in asked.groups}
    if sizes != {g.name: g.size for g in store.layout.groups}:
        raise LayoutMismatch(
            f"store {store.url} is grouped by {store.layout.rule!r} "
            f"({len(store.layout.groups)} groups); rule {rule!r} gives {len(sizes)} other groups"
        )


def ingest_checkpoints(
    url: str | os.PathLike[str],
    folder: str | os.PathLike[str],
    *,
    base: str | os.PathLike[str] | None = None,
    first_is_theta0: bool = False,
    rule: str = "auto",
    options: StoreOptions | None = None,
    verify_existing: bool = True,
    preflight: bool = True,
    progress: Progress | None = None,
) -> IngestReport:
    """Ingest `folder/checkpoint-*/` (ordered by step) into the store at `url`.

    Row 0 is theta0: the pre-trained model folder `base`, or, with `first_is_theta0`, the first
    checkpoint. A new store takes its layout from theta0 (in the model's parameter order when a
    `config.json` says which model it is); an existing store keeps its own, and every
    checkpoint must match it. Each checkpoint is read tensor by tensor (safetensors, or a
    memory-mapped `pytorch_model.bin`).
    """
    options = options or StoreOptions()
    if (base is None) == (not first_is_theta0):
        raise InvalidInput(
            "theta0 is ambiguous: give base (--base) or first_is_theta0 (--first-is-theta0)"
            if base is not None
            else "no theta0: give the pre-trained model folder as base (--base), "
            "or first_is_theta0 (--first-is-theta0)"
        )
    checkpoints = list_checkpoints(folder)
    if base is not None:
        weight_files(base)  # a missing base fails here, before anything else is read
        checkpoints = [Checkpoint(Path(base), step=0, epoch=0.0), *checkpoints]
    store = open_existing(url, options)
    if store is not None:
        layout = store.layout
        if rule != "auto":
            _check_rule(store, checkpoints[0].path, rule)
    else:
        with named_input(str(checkpoints[0].path)):
            layout = folder_layout(checkpoints[0].path, rule)
    rows = [_checkpoint_row(c, layout) for c in checkpoints]
    return ingest_rows(
        url,
        rows,
        layout,
        store,
        options,
        verify_existing=verify_existing,
        preflight=preflight,
        progress=progress,
    )


def __getattr__(name: str) -> type[TrajectoryCallback]:
    # `from storage.ingest import TrajectoryCallback` without importing transformers eagerly.
    if name == "TrajectoryCallback":
        from storage.callback import TrajectoryCallback  # noqa: PLC0415 - needs transformers

        return TrajectoryCallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "IngestReport",
    "StoreOptions",
    "TrajectoryCallback",  # noqa: F822 - resolved lazily by __getattr__
    "flat_layout",
    "ingest_arrays",
    "ingest_checkpoints",
    "load_arrays",
]
