"""Reading a trajectory store: committed rows as float32, column blocks, and verification.

A chunk of a committed row that is missing fails the read unless the row's sha256 shows it is
one zarr never stored because it held only zeros; a corrupt chunk fails with the rows named.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from storage.arrays import decode, digest
from storage.chunks import MissingChunk
from storage.errors import InvalidInput, NotFound, StorageError, TinysubError
from storage.trajectory.handle import StoreHandle


class RowReader(StoreHandle):
    """The reading half of `TrajectoryStore`."""

    def _check_rows(self, rows: Sequence[int] | None) -> npt.NDArray[Any]:
        if rows is None:
            return np.arange(self.num_rows)
        idx = np.asarray(rows, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_rows):
            raise NotFound(
                f"rows {idx.tolist()} are not all committed; the store has {self.num_rows} rows"
            )
        return idx

    def read_block(
        self, group: str, start: int = 0, stop: int | None = None, rows: Sequence[int] | None = None
    ) -> npt.NDArray[np.float32]:
        """Committed rows (all, or the given indices) of columns [start, stop) as float32."""
        size = self.layout.group(group).size
        stop = size if stop is None else stop
        if not 0 <= start <= stop <= size:
            raise InvalidInput(
                f"columns [{start}, {stop}) are outside group {group!r} of size {size}"
            )
        idx = self._check_rows(rows)
        try:
            raw = self._read_committed(group, idx, start, stop)
        except TinysubError:
            raise
        except (KeyError, FileNotFoundError) as exc:
            raise NotFound(f"the trajectory store at {self.url} was deleted while read") from exc
        except (OSError, RuntimeError, ValueError) as exc:
            raise self._corrupt(group, idx, start, stop, exc) from exc
        self._check_still_there()
        return decode(np.asarray(raw), self.dtype)

    def _read_committed(
        self, group: str, idx: npt.NDArray[Any], start: int, stop: int
    ) -> npt.NDArray[Any]:
        """The stored values, every missing chunk accounted for: each round either reads or
        vouches for one more row's missing chunks (or raises), so it ends."""
        while True:
            try:
                return self._read_fresh(group, idx, start, stop)
            except MissingChunk as exc:
                self._explain_missing(exc)

    def _read_fresh(
        self, group: str, idx: npt.NDArray[Any], start: int, stop: int
    ) -> npt.NDArray[Any]:
        try:
            return self._read(group, idx, start, stop)
        except IndexError:
            # The rows are committed, so the array has grown since this handle opened it
            # (another thread refreshed the rows): open it again and read once more.
            self._reopen_arrays()
            return self._read(group, idx, start, stop)

    def _explain_missing(self, exc: MissingChunk) -> None:
        """A chunk of a committed row is not there. Returns when the row's sha256 shows it is
        one zarr never stored (all zeros, the fill value); raises NotFound when the whole store
        is gone and StorageError when the row's data was lost."""
        self._check_still_there()
        group, row = exc.array, exc.row
        expected = self._rows[row].sha256.get(group) if row < self.num_rows else None
        if expected is not None and self._row_digest(group, row) == expected:
            self._zero_chunks.add((group, row))
            return
        raise StorageError(
            f"row {row} of group {group!r} in the trajectory store at {self.url} is committed "
            f"but its chunk {exc.key} is missing and the row no longer matches its sha256: "
            "its data was lost (restore the store from a copy, or create it again)",
            detail={"store": self.url, "group": group, "row": row, "chunk": exc.key},
        )

    def _row_digest(self, group: str, row: int) -> str | None:
        """sha256 of a stored row as zarr reads it, or None if it cannot be read at all."""
        try:
            return digest(np.asarray(self._lenient_array(group)[row, :]))
        except (KeyError, OSError, RuntimeError, ValueError):
            return None

    def _corrupt(
        self, group: str, idx: npt.NDArray[Any], start: int, stop: int, exc: Exception
    ) -> StorageError:
        """The error for a failed read, naming the rows whose chunks fail (found by reading
        them one by one: only ever on this error path)."""
        bad = []
        for row in idx.tolist():
            try:
                self._read_committed(group, np.array([row]), start, stop)
            except Exception:  # noqa: BLE001 - any failure marks the row
                bad.append(row)
        where = ", ".join(f"row {r}" for r in bad) if bad else f"rows {idx.tolist()}"
        return StorageError(
            f"reading {group!r} {where} (columns [{start}, {stop})) from the trajectory store "
            f"at {self.url} failed (a chunk may be corrupt): {exc}",
            detail={"store": self.url, "group": group, "rows": bad, "columns": [start, stop]},
        )

    def _read(self, group: str, idx: npt.NDArray[Any], start: int, stop: int) -> npt.NDArray[Any]:
        arr = self._array(group)
        if idx.size and np.array_equal(idx, np.arange(idx[0], idx[-1] + 1)):
            selected = arr[int(idx[0]) : int(idx[-1]) + 1, start:stop]
        else:
            selected = arr.get_orthogonal_selection((idx, slice(start, stop)))
        # A 2-d selection (zarr's default buffers are in host memory) is a 2-d numpy array.
        raw = cast("npt.NDArray[Any]", selected)
        if raw.shape[0] != idx.size:  # a slice past a stale shape is clipped, not refused
            raise IndexError(f"read {raw.shape[0]} rows of {idx.size} from {group!r}")
        return raw

    def read_row(self, index: int, group: str) -> npt.NDArray[np.float32]:
        return cast("npt.NDArray[np.float32]", self.read_block(group, rows=[index])[0])

    def column_ranges(self, group: str, block_cols: int | None = None) -> list[tuple[int, int]]:
        """Column blocks of a group aligned to the chunk grid (whole chunks per block)."""
        size = self.layout.group(group).size
        step = self.chunk_cols if block_cols is None else block_cols
        step = max(self.chunk_cols, (step // self.chunk_cols) * self.chunk_cols)
        return [(s, min(s + step, size)) for s in range(0, size, step)]

    def verify(self) -> list[str]:
        """Re-read every committed row and compare with its sha256; returns the problems."""
        problems = []
        # zarr's default reading (a missing chunk is zeros), so that the sha256 is the judge:
        # it accepts the zero chunks zarr never stored and names any chunk that was lost.
        arrays: dict[str, Any] = {}
        for info in self._rows:
            for group in self.layout.group_names:
                try:
                    if group not in arrays:
                        arrays[group] = self._lenient_array(group)
                    raw = arrays[group][info.index, :]
                except Exception as exc:  # noqa: BLE001 - any read failure is a finding
                    problems.append(f"row {info.index} {group}: unreadable ({exc})")
                    continue
                if digest(np.asarray(raw)) != info.sha256.get(group):
                    problems.append(f"row {info.index} {group}: sha256 mismatch")
        return problems
