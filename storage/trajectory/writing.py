"""Writing a trajectory store: append and commit checkpoint rows, annotate committed ones.

A row's chunks are written (and, on local disks, fsynced) first; its commit marker is written
atomically last, then its row index entry. See storage.trajectory for the crash guarantees.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from storage.arrays import encode
from storage.errors import (
    Conflict,
    InvalidInput,
    LayoutMismatch,
    NotFound,
    ReadOnly,
    StorageError,
    TinysubError,
    storage_error,
)
from storage.rows import ROWS_DIR, RowInfo, encode_row, row_key
from storage.trajectory.handle import StoreHandle

if TYPE_CHECKING:
    from _hashlib import HASH

ROW_BLOCK_VALUES = 1 << 18  # write_row_blocks writes ~1 MiB of float32 at a time (whole chunks)

log = logging.getLogger(__name__)


class RowWriter(StoreHandle):
    """The writing half of `TrajectoryStore`."""

    def append(
        self,
        vectors: Mapping[str, Any],
        *,
        step: int | None = None,
        epoch: float | None = None,
        metrics: Mapping[str, float] | None = None,
    ) -> int:
        """Write one checkpoint row (group name -> flat vector) and commit it. Returns its index."""
        return self.write_row(self.num_rows, vectors, step=step, epoch=epoch, metrics=metrics)

    def write_row(
        self,
        index: int,
        vectors: Mapping[str, Any],
        *,
        step: int | None = None,
        epoch: float | None = None,
        metrics: Mapping[str, float] | None = None,
    ) -> int:
        """Write row `index`: the next row, or a committed row again with identical values.

        Re-sending a committed row is accepted when its bytes are equal (idempotent resume)
        and refused with `Conflict` when they differ. Everything is validated first: a bad row
        writes nothing.
        """
        if self.read_only:
            raise ReadOnly(f"{self.url} was opened read-only")
        encoded, sums = encode_row(vectors, self.layout, self.dtype)
        if index < self.num_rows:
            if self._rows[index].sha256 != sums:
                raise Conflict(f"row {index} is already committed with other values")
            return index
        if index != self.num_rows:
            raise InvalidInput(f"row {index} cannot be written before row {self.num_rows}")
        try:
            self._ensure_capacity(index + 1)
            for g, values in encoded.items():
                self._array(g)[index, :] = values
            self._sync_row(index)
        except TinysubError:
            raise
        except OSError as exc:
            raise storage_error(f"writing row {index} to {self.url} failed", exc) from exc
        return self._commit_marker(index, step, epoch, metrics, sums)

    def write_row_blocks(
        self,
        index: int,
        read: Callable[[str, int, int], npt.NDArray[Any]],
        *,
        step: int | None = None,
        epoch: float | None = None,
        metrics: Mapping[str, float] | None = None,
    ) -> int:
        """`write_row` for rows too large to hold in memory: `read(group, start, stop)` returns
        the float32 values [start, stop) of a group, and the row is written (and its sha256
        computed, byte-identical to `write_row`'s) group by group in chunk-aligned blocks of
        about `ROW_BLOCK_VALUES` values.

        The marker is written last, as in `write_row`. float16/bfloat16 rows are encoded in a
        first pass that writes nothing, so a value that overflows them writes nothing; any other
        bad block (size, NaN/Inf) stops the write before the marker: the row stays uncommitted,
        as after a crash, and the next write of the row rewrites it.
        """
        if self.read_only:
            raise ReadOnly(f"{self.url} was opened read-only")
        if index < self.num_rows or self.dtype != "float32":
            sums = self._row_sums(read)
            if index < self.num_rows:
                if self._rows[index].sha256 != sums:
                    raise Conflict(f"row {index} is already committed with other values")
                return index
        if index != self.num_rows:
            raise InvalidInput(f"row {index} cannot be written before row {self.num_rows}")
        try:
            self._ensure_capacity(index + 1)
            sums = {}
            for g, start, stop, encoded, h in self._row_blocks(read):
                self._array(g)[index, start:stop] = encoded
                if stop == self.layout.group(g).size:
                    sums[g] = h.hexdigest()
            self._sync_row(index)
        except TinysubError:
            raise
        except OSError as exc:
            raise storage_error(f"writing row {index} to {self.url} failed", exc) from exc
        return self._commit_marker(index, step, epoch, metrics, sums)

    def _row_blocks(
        self, read: Callable[[str, int, int], npt.NDArray[Any]]
    ) -> Iterator[tuple[str, int, int, npt.NDArray[Any], HASH]]:
        """(group, start, stop, encoded block, the group's running sha256) for every block of
        a row, in the layout's order; every block is validated as `encode_row` would."""
        step = max(1, ROW_BLOCK_VALUES // self.chunk_cols) * self.chunk_cols
        for group in self.layout.groups:
            h = hashlib.sha256()
            for start in range(0, group.size, step):
                stop = min(start + step, group.size)
                block = np.asarray(read(group.name, start, stop), dtype=np.float32).reshape(-1)
                if block.size != stop - start:
                    raise LayoutMismatch(
                        f"group {group.name!r} block [{start}, {stop}) has {block.size} values"
                    )
                bad = int(np.count_nonzero(~np.isfinite(block)))
                if bad:
                    raise InvalidInput(
                        f"group {group.name!r} has {bad} NaN or Inf values in [{start}, {stop})"
                    )
                encoded = encode(block, self.dtype)
                h.update(np.ascontiguousarray(encoded).data.cast("B"))
                yield group.name, start, stop, encoded, h

    def _row_sums(self, read: Callable[[str, int, int], npt.NDArray[Any]]) -> dict[str, str]:
        sums = {}
        for g, _, stop, _, h in self._row_blocks(read):
            if stop == self.layout.group(g).size:
                sums[g] = h.hexdigest()
        return sums

    def _commit_marker(
        self,
        index: int,
        step: int | None,
        epoch: float | None,
        metrics: Mapping[str, float] | None,
        sums: dict[str, str],
    ) -> int:
        info = RowInfo(
            index=index,
            step=step,
            epoch=epoch,
            metrics={k: float(v) for k, v in (metrics or {}).items()},
            sha256=sums,
            written_at=time.time(),
        )
        self.loc.write_json_atomic(info.to_dict(), ROWS_DIR, row_key(index))
        self._rows.append(info)
        try:
            self._rows.write(index)
        except StorageError as exc:
            # The marker committed the row: the index only speeds up opening, and every open
            # reads the markers past it, so the row stays visible; the next commit retries.
            log.warning(
                "row %d of %s is committed; its row index entry is not: %s", index, self.url, exc
            )
        return index

    def _sync_row(self, index: int) -> None:
        """fsync row `index`'s chunk files, each array's metadata (its shape may just have
        grown to hold the row) and their directories, before the marker commits the row:
        zarr renames chunks into place without fsync, so otherwise a power cut could leave a
        committed row whose chunks are empty or gone. Always all of them, not only what this
        call wrote: an earlier attempt cut short may have grown an array and never synced it.
        Object stores have nothing to sync (see `Location.sync`)."""
        if not self.loc.is_local:
            return
        keys = []
        for group in self.layout.groups:
            arr = self._array(group.name)
            keys.append(f"{group.name}/zarr.json")
            for j in range(-(-group.size // arr.chunks[1])):
                keys.append(f"{group.name}/{arr.metadata.encode_chunk_key((index, j))}")
        self.loc.sync(keys)

    def annotate(self, index: int, metrics: Mapping[str, float]) -> RowInfo:
        """Merge metrics into committed row `index` (a trainer logs them after the weights).

        The marker is rewritten atomically with the same sha256s: the row stays visible and
        its values unchanged; only its metadata grows.
        """
        if self.read_only:
            raise ReadOnly(f"{self.url} was opened read-only")
        if not 0 <= index < self.num_rows:
            raise NotFound(f"row {index} is not committed; the store has {self.num_rows} rows")
        old = self._rows[index]
        info = RowInfo(
            index=old.index,
            step=old.step,
            epoch=old.epoch,
            metrics={**old.metrics, **{k: float(v) for k, v in metrics.items()}},
            sha256=old.sha256,
            written_at=old.written_at,
        )
        self.loc.write_json_atomic(info.to_dict(), ROWS_DIR, row_key(index))
        self._rows.replace(info)
        # Readers take metadata from the index: a failure here is the annotation's failure.
        self._rows.write(index)
        return info

    def _ensure_capacity(self, rows: int) -> None:
        for group in self.layout.groups:
            arr = self._array(group.name)
            if arr.shape[0] < rows:
                arr.resize((max(rows, 2 * arr.shape[0]), group.size))
