"""The two phases every ingester shares: check every new row without writing, then write.

`ingest_rows(url, rows, ...)` takes `Row`s (a name for messages, a loader of one row's groups,
step/epoch/metrics), checks each row that is not committed yet as a write would (layout,
finite values, dtype range), and only then creates the store if needed and appends them; rows
already committed are re-sent and must match (see storage.ingest for the why).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy.typing as npt

from storage.arrays import check_dtype
from storage.errors import Conflict, InvalidInput, TinysubError
from storage.layout import Layout
from storage.trajectory import DEFAULT_CHUNK_COLS, TrajectoryStore, encode_row

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
"""`progress(phase, done, total)`, phase `check` or `write` (the CLI's rich bars)."""


@dataclass(frozen=True)
class IngestReport:
    url: str
    rows: int  # committed rows in the store afterwards
    written: int  # rows this call appended
    verified: int  # committed rows re-sent and found equal
    skipped: int  # committed rows neither re-sent nor checked (verify_existing=False)
    layout_hash: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class StoreOptions:
    """How a store is created when it does not exist yet (ignored for an existing store)."""

    model_name: str = ""
    revision: str | None = None
    dtype: str = "float32"
    chunk_cols: int = DEFAULT_CHUNK_COLS
    storage_options: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        # Checked before any input is read, not when the store is finally created.
        check_dtype(self.dtype)
        if self.chunk_cols < 1:
            raise InvalidInput(f"chunk_cols must be positive, not {self.chunk_cols}")


@dataclass
class Row:
    """One row to ingest: where it comes from, its metadata, and how to load it."""

    name: str  # for messages: the checkpoint folder or `<file>[i]`
    load: Callable[[], dict[str, npt.NDArray[Any]]]  # group -> flat float32 vector
    step: int | None = None
    epoch: float | None = None
    metrics: dict[str, float] | None = None


@contextmanager
def named_input(name: str) -> Iterator[None]:
    """Prefix any tinysub error with the input it came from, keeping its class."""
    try:
        yield
    except TinysubError as exc:
        if str(exc).startswith(name):
            raise
        raise type(exc)(f"{name}: {exc}", detail=exc.detail) from exc


def open_existing(url: str | os.PathLike[str], options: StoreOptions) -> TrajectoryStore | None:
    if not TrajectoryStore.exists(url, options.storage_options):
        return None
    store = TrajectoryStore.open(url, read_only=False, storage_options=options.storage_options)
    for field_name, given in (("model_name", options.model_name), ("revision", options.revision)):
        held = store.manifest.get(field_name)
        if given and held and given != held:
            raise Conflict(f"store {store.url} holds {field_name} {held!r}, not {given!r}")
    return store


def ingest_rows(
    url: str | os.PathLike[str],
    rows: Sequence[Row],
    layout: Layout,
    store: TrajectoryStore | None,
    options: StoreOptions,
    *,
    verify_existing: bool,
    preflight: bool,
    progress: Progress | None,
) -> IngestReport:
    started = time.perf_counter()
    done = store.num_rows if store is not None else 0
    dtype = store.dtype if store is not None else options.dtype
    if preflight:
        _check_rows(rows[done:], layout, dtype, progress)
    if store is None:
        store = TrajectoryStore.create(
            url,
            layout,
            model_name=options.model_name,
            revision=options.revision,
            dtype=options.dtype,
            chunk_cols=options.chunk_cols,
            storage_options=options.storage_options,
        )
    written, verified, skipped = _write_rows(store, rows, done, verify_existing, progress)
    log.info("%s: %d rows written, %d verified, %d skipped", store.url, written, verified, skipped)
    return IngestReport(
        url=store.url,
        rows=store.num_rows,
        written=written,
        verified=verified,
        skipped=skipped,
        layout_hash=store.layout.hash,
        seconds=time.perf_counter() - started,
    )


def _check_rows(
    pending: Sequence[Row], layout: Layout, dtype: str, progress: Progress | None
) -> None:
    """Phase `check`: run every test a write would run on the pending rows, writing nothing."""
    for i, row in enumerate(pending):
        with named_input(row.name):
            encode_row(row.load(), layout, dtype)
        if progress:
            progress("check", i + 1, len(pending))


def _write_rows(
    store: TrajectoryStore,
    rows: Sequence[Row],
    done: int,
    verify_existing: bool,
    progress: Progress | None,
) -> tuple[int, int, int]:
    """Phase `write`: append the rows past the `done` committed ones; re-send the committed ones
    (or, without `verify_existing`, only compare their steps). Returns (written, verified,
    skipped)."""
    written = verified = skipped = 0
    for index, row in enumerate(rows):
        with named_input(row.name):
            if index < done and not verify_existing:
                _check_step(store, index, row)
                skipped += 1
            elif index < done:
                _verify_row(store, index, row)
                verified += 1
            else:
                store.write_row(
                    index, row.load(), step=row.step, epoch=row.epoch, metrics=row.metrics
                )
                written += 1
        if progress:
            progress("write", index + 1, len(rows))
    return written, verified, skipped


def _check_step(store: TrajectoryStore, index: int, row: Row) -> None:
    """A committed row not re-sent must at least be the same step."""
    held = store.row(index).step
    if row.step is not None and held is not None and held != row.step:
        raise Conflict(f"row {index} of {store.url} is step {held}, not {row.step}")


def _verify_row(store: TrajectoryStore, index: int, row: Row) -> None:
    """Re-send a committed row: `write_row` accepts equal bytes, raises Conflict on others."""
    try:
        store.write_row(index, row.load())
    except Conflict as exc:
        raise Conflict(
            f"differs from row {index} already committed in {store.url}; "
            "it is not the same trajectory"
        ) from exc


# ---------------------------------------------------------------------------- checkpoints
