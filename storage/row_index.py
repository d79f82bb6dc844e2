"""The row index of a trajectory store: committed rows' `RowInfo` in a few documents, so that
opening a store reads the same few of them however many rows it holds.

On disk, next to the commit markers::

    _rows/index/00000000.json   rows 0..63    {"format", "first": 0, "rows": [RowInfo, ...]}
    _rows/index/00000064.json   rows 64..127
    ...                         the last segment holds the rows committed since

The markers (`_rows/<row>.json`) stay the source of truth. A row's index entry is written after
its marker (both atomic and fsynced), so the index can lag behind the markers, never lead them.
Opening lists the segments, reads the last one (the row count is its first row plus its
length) and then reads markers from that count on until one is missing: after a crash between
a marker and its index entry this finds the row; otherwise it is the one read that finds
nothing. Segments are written in order, each after the one before it is full, so the index is
always a prefix of the committed rows. Other segments are read on first use: a row or a page
of rows costs a read or two.

A store written before the index existed, or whose index cannot be read, has its markers read
one by one (O(rows), as before); the next row a writer commits writes the whole index again.
"""

from __future__ import annotations

import bisect
import logging
import re
from collections.abc import Sequence
from typing import overload

from storage.errors import NotFound, StorageError
from storage.objects import Location
from storage.rows import ROWS_DIR, RowInfo, row_key

log = logging.getLogger(__name__)

INDEX_DIR = "index"  # under ROWS_DIR
INDEX_FORMAT = "tinysub.row-index/1"
# A commit rewrites one segment and an open reads one: 64 rows of a BERT-base store (15 groups,
# ~1.3 KB of sha256s per row) are ~80 KB.
SEGMENT_ROWS = 64
_SEGMENT = re.compile(r"^(\d{8})\.json$")


def segment_key(first: int) -> str:
    return f"{first:08d}.json"


def _segment_start(row: int) -> int:
    return row - row % SEGMENT_ROWS


class RowIndex(Sequence[RowInfo]):
    """The committed rows of one store, loaded per segment on first use. Build with `load`."""

    def __init__(self, loc: Location) -> None:
        self.loc = loc
        self._count = 0
        self._indexed = 0  # rows the segments on disk hold: a prefix of the committed rows
        self._segments: list[int] = []  # first row of every segment on disk, ascending
        self._loaded: dict[int, RowInfo] = {}

    @classmethod
    def load(cls, loc: Location) -> RowIndex:
        index = cls(loc)
        names = loc.list(ROWS_DIR, INDEX_DIR)
        segments = sorted(int(m[1]) for n in names if (m := _SEGMENT.match(n)))
        if segments:
            try:
                last = index._read_segment(segments[-1])
            except StorageError as exc:
                log.warning("ignoring the row index of %s, reading its markers: %s", loc.url, exc)
            else:
                index._segments = segments
                index._count = index._indexed = segments[-1] + len(last)
                index._remember(last)
        # Rows committed past the index: a crash fell between a marker and its index entry, or
        # the store has no index yet (then this reads every marker, once).
        while (info := index._read_marker(index._count)) is not None:
            index._loaded[info.index] = info
            index._count += 1
        return index

    # ------------------------------------------------------------------------- reading
    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, i: int) -> RowInfo: ...
    @overload
    def __getitem__(self, i: slice) -> list[RowInfo]: ...
    def __getitem__(self, i: int | slice) -> RowInfo | list[RowInfo]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self._count))]
        if i < 0:
            i += self._count
        if not 0 <= i < self._count:
            raise IndexError(f"row {i} is not committed; the store has {self._count} rows")
        if i not in self._loaded:
            self._load_row(i)
        return self._loaded[i]

    def _load_row(self, i: int) -> None:
        where = bisect.bisect_right(self._segments, i) - 1
        if where >= 0 and i < self._indexed:
            try:
                self._remember(self._read_segment(self._segments[where]))
            except StorageError as exc:
                log.warning("row index of row %d in %s is unreadable: %s", i, self.loc.url, exc)
        if i not in self._loaded:  # not in its segment: the marker has it
            info = self._read_marker(i)
            if info is None:
                raise StorageError(
                    f"row {i} of the trajectory store at {self.loc.url} is committed but its "
                    "marker is gone: the store was deleted or damaged",
                    detail={"store": self.loc.url, "row": i},
                )
            self._loaded[i] = info

    def _remember(self, rows: list[RowInfo]) -> None:
        for info in rows:
            self._loaded.setdefault(info.index, info)

    def _read_segment(self, first: int) -> list[RowInfo]:
        doc = self.loc.read_json(ROWS_DIR, INDEX_DIR, segment_key(first))
        try:
            rows = [RowInfo.from_dict(d) for d in doc["rows"]]
            ok = doc["format"] == INDEX_FORMAT and doc["first"] == first
        except (KeyError, TypeError, ValueError) as exc:
            raise StorageError(f"row index segment {segment_key(first)} is malformed") from exc
        if not ok or [r.index for r in rows] != list(range(first, first + len(rows))):
            raise StorageError(f"row index segment {segment_key(first)} is not the rows it names")
        return rows

    def _read_marker(self, i: int) -> RowInfo | None:
        try:
            return RowInfo.from_dict(self.loc.read_json(ROWS_DIR, row_key(i)))
        except NotFound:
            return None

    # ------------------------------------------------------------------------- writing
    def append(self, info: RowInfo) -> None:
        """Record a row whose marker was just committed (`write` then indexes it)."""
        if info.index != self._count:
            raise ValueError(f"row {info.index} is not the next row ({self._count})")
        self._loaded[info.index] = info
        self._count += 1

    def replace(self, info: RowInfo) -> None:
        """Record new metadata of a committed row whose marker was just rewritten."""
        if not 0 <= info.index < self._count:
            raise IndexError(f"row {info.index} is not committed")
        self._loaded[info.index] = info

    def write(self, changed: int) -> None:
        """Write the segment of row `changed` and every segment past the index, in order: the
        segments on disk then hold every row this handle knows (call after the marker)."""
        starts = {_segment_start(changed)}
        starts.update(range(_segment_start(self._indexed), self._count, SEGMENT_ROWS))
        for first in sorted(s for s in starts if s < self._count):
            rows = self[first : min(first + SEGMENT_ROWS, self._count)]
            doc = {"format": INDEX_FORMAT, "first": first, "rows": [r.to_dict() for r in rows]}
            self.loc.write_json_atomic(doc, ROWS_DIR, INDEX_DIR, segment_key(first))
            if first not in self._segments:
                bisect.insort(self._segments, first)
            self._indexed = max(self._indexed, first + len(rows))


__all__ = ["RowIndex", "SEGMENT_ROWS", "INDEX_DIR", "segment_key"]
