"""Chunk tasks: what an executor runs on a worker. Each reads its own block from the store.

Everything here is a top-level function over frozen dataclasses of plain values (URLs, row
indices, small matrices), so Dask and Ray can pickle it; no task ships trajectory data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from storage.basis import layer_sha256, write_rows
from storage.errors import Conflict, InvalidInput, storage_error
from storage.objects import Location
from storage.trajectory import TrajectoryStore
from worker.svd.backend import Products, Refs


@dataclass(frozen=True)
class SourceRows:
    """Rows of one trajectory store that enter a computation."""

    url: str
    rows: tuple[int, ...]
    ref_row: int | None = None  # theta0's row, subtracted in delta/centered modes
    label: str = ""
    storage_options_json: str = "{}"
    # The store's creation time when the computation was planned: with the URL, the identity of
    # the store, so a worker never reads a store re-created at the same URL through an old handle.
    created_at: float | None = None

    @property
    def storage_options(self) -> dict[str, Any]:
        options: dict[str, Any] = json.loads(self.storage_options_json)
        return options


@dataclass(frozen=True)
class BlockTask:
    """Columns [start, stop) of one group, over the rows of every source.

    augment (raw mode): the first source's ref_row (theta0) is subtracted from every row and
    appended as the last row, Z = [W - 1 r^T; r^T] (see `worker.svd.gram`).
    """

    sources: tuple[SourceRows, ...]
    group: str
    start: int
    stop: int
    device: str | None = None
    augment: bool = False


@dataclass(frozen=True)
class Output:
    """Where pass 2 writes: columns [col0, col0 + rank) of the product go to one basis layer."""

    url: str
    col0: int
    rank: int
    storage_options_json: str = "{}"


@dataclass(frozen=True)
class ProjectTask:
    block: BlockTask
    m: np.ndarray  # (n, K) float64, all bases of this group side by side
    outputs: tuple[Output, ...]


@dataclass(frozen=True)
class HashTask:
    url: str
    group: str
    chunk_rows: int
    storage_options_json: str = "{}"


@lru_cache(maxsize=64)
def _cached_store(url: str, options_json: str, created_at: float | None) -> TrajectoryStore:
    # Workers see the same block of a store many times; re-reading the manifest and commit
    # markers per task would dominate small blocks. The key holds the store's creation time, so
    # a store deleted and created again at the same URL is opened afresh, never read through
    # the old handle (whose rows and chunk grid are another store's).
    return TrajectoryStore.open(url, storage_options=json.loads(options_json))


def open_source(src: SourceRows) -> TrajectoryStore:
    """The store of a source, cached per worker, holding every row the source needs."""
    store = _cached_store(src.url, src.storage_options_json, src.created_at)
    if src.created_at is not None and store.created_at != src.created_at:
        _cached_store.cache_clear()  # the handle is of another store: drop it
        raise Conflict(
            f"the trajectory store at {src.url} was replaced since this computation was "
            "planned; order it again"
        )
    if store.num_rows <= max(src.rows + ((src.ref_row,) if src.ref_row is not None else ())):
        store.refresh()  # rows appended (and arrays grown) since it was cached
    return store


def read_block(task: BlockTask) -> tuple[np.ndarray, Refs, np.ndarray | None]:
    """A block's float32 rows, the (rows, theta0) pairs to subtract from them in float64, and
    the shift row to append after them (raw mode, else None): together the rows of Z."""
    parts, refs, n, shift = [], [], 0, None
    for src in task.sources:
        store = open_source(src)
        wanted = list(src.rows)
        if src.ref_row is not None and src.ref_row not in wanted:
            wanted.append(src.ref_row)
        block = store.read_block(task.group, task.start, task.stop, rows=sorted(set(wanted)))
        pos = {r: i for i, r in enumerate(sorted(set(wanted)))}
        parts.append(_take_rows(block, [pos[r] for r in src.rows]))
        if src.ref_row is not None and task.augment:
            shift = block[pos[src.ref_row]] if shift is None else shift
        elif src.ref_row is not None:
            refs.append((slice(n, n + len(src.rows)), block[pos[src.ref_row]]))
        n += len(src.rows)
    if task.augment:
        if shift is None:
            raise InvalidInput("raw mode shifts by theta0: the first source needs a ref_row")
        refs = [(slice(0, n), shift)]
    x = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
    return x, refs, shift


def _take_rows(block: np.ndarray, positions: list[int]) -> np.ndarray:
    """block[positions] without a copy when the positions are a run (the usual case: all rows,
    or all but theta0). A block is (rows x block_cols) float32, the largest thing a task holds."""
    p0 = positions[0]
    if positions == list(range(p0, p0 + len(positions))):
        return block[p0 : p0 + len(positions)]
    return block[positions]


def gram_block(task: BlockTask) -> np.ndarray:
    """(n, n) float64 Gram of X restricted to one column block."""
    x, refs, append = read_block(task)
    return Products(task.device).gram(x, refs, append)


def project_block(task: ProjectTask) -> int:
    """V rows of one block for every output basis; returns bytes written."""
    x, refs, append = read_block(task.block)
    v = Products(task.block.device).project(x, task.m, refs, append)  # (c, K) float32
    written = 0
    for out in task.outputs:
        loc = Location.from_url(out.url, json.loads(out.storage_options_json))
        try:
            write_rows(
                loc, task.block.group, task.block.start, v[:, out.col0 : out.col0 + out.rank]
            )
        except OSError as exc:  # a full disk is the caller's to fix, not a worker crash
            raise storage_error(f"writing V rows to {out.url} failed", exc) from exc
        written += 4 * v.shape[0] * out.rank
    return written


def hash_layer(task: HashTask) -> str:
    loc = Location.from_url(task.url, json.loads(task.storage_options_json))
    return layer_sha256(loc, task.group, task.chunk_rows)
