"""An open trajectory store: its manifest, committed rows and zarr arrays, and staying current.

`StoreHandle` is the state that `TrajectoryStore`'s writing and reading halves share
(storage.trajectory.writing, storage.trajectory.reading): the manifest's properties, the row
index, the arrays opened lazily, and `refresh` for rows appended by another process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import zarr

from storage.chunks import StrictChunks
from storage.errors import Conflict, InvalidInput, NotFound
from storage.layout import Layout
from storage.objects import Location, zarr_store
from storage.row_index import RowIndex
from storage.rows import RowInfo
from storage.trajectory.manifest import MANIFEST

if TYPE_CHECKING:
    from zarr import Group
    from zarr.types import AnyArray


class StoreHandle:
    """The open store's state: manifest, layout, committed rows and the arrays."""

    def __init__(self, loc: Location, manifest: dict[str, Any], *, read_only: bool) -> None:
        self.loc = loc
        self.manifest = manifest
        self.read_only = read_only
        self.layout = Layout.from_dict(manifest["layout"])
        self._root: Group | None = None
        self._arrays: dict[str, AnyArray] = {}
        # (group, row) of committed rows whose missing chunks the row's sha256 showed to be
        # zeros zarr never stored; shared with the StrictChunks of every root opened.
        self._zero_chunks: set[tuple[str, int]] = set()
        self._rows: RowIndex = self._scan_rows()

    # ------------------------------------------------------------------------- properties
    @property
    def url(self) -> str:
        return self.loc.url

    @property
    def dtype(self) -> str:
        return cast(str, self.manifest["dtype"])

    @property
    def chunk_cols(self) -> int:
        return int(self.manifest["chunk_cols"])

    @property
    def model_name(self) -> str:
        return cast(str, self.manifest.get("model_name", ""))

    @property
    def revision(self) -> str | None:
        return cast("str | None", self.manifest.get("revision"))

    @property
    def num_rows(self) -> int:
        return len(self._rows)

    @property
    def rows(self) -> list[RowInfo]:
        """Every committed row (reads the whole row index: use `row` or `row_page` for some)."""
        return list(self._rows)

    def row(self, index: int) -> RowInfo:
        """Committed row `index` (at most one read)."""
        if not 0 <= index < self.num_rows:
            raise NotFound(f"row {index} is not committed; the store has {self.num_rows} rows")
        return self._rows[index]

    def row_page(self, offset: int, limit: int) -> list[RowInfo]:
        """Committed rows [offset, offset + limit), fewer past the end (a read or two for a
        page of up to 64 rows)."""
        if offset < 0 or limit < 0:
            raise InvalidInput(f"offset {offset} and limit {limit} must not be negative")
        return self._rows[offset : offset + limit]

    @property
    def created_at(self) -> float | None:
        """When the store was created: with the URL, the identity of this store (a store
        deleted and created again at the same URL is another store)."""
        return cast("float | None", self.manifest.get("created_at"))

    def refresh(self) -> None:
        """Re-read the row index (another process may have appended rows).

        Raises NotFound if the store was deleted and Conflict if another store was created at
        its URL since this handle was opened: a handle never silently switches stores.
        """
        if not self.loc.exists(MANIFEST):
            raise NotFound(f"the trajectory store at {self.url} was deleted")
        current = self.loc.read_json(MANIFEST)
        if current.get("created_at") != self.created_at:
            raise Conflict(
                f"the trajectory store at {self.url} was replaced by another one since it "
                "was opened; open it again"
            )
        # The arrays first: the writer may have grown them, and rows scanned below must never
        # be read through an array opened before they existed.
        self._reopen_arrays()
        self._rows = self._scan_rows()

    def _reopen_arrays(self) -> None:
        self._root = None
        self._arrays = {}

    def nbytes(self, group: str | None = None) -> int:
        """Bytes of committed rows, as float32, for one group or all."""
        groups = [self.layout.group(group)] if group else self.layout.groups
        return 4 * self.num_rows * sum(g.size for g in groups)

    def _scan_rows(self) -> RowIndex:
        # A row counts only if it and every row before it is committed: a gap means an
        # interrupted write, and rows after a gap were never acknowledged to anyone.
        return RowIndex.load(self.loc)

    # ----------------------------------------------------------------------------- arrays
    def _array(self, group: str) -> AnyArray:
        if group not in self._arrays:
            self.layout.group(group)  # raises a clear error for unknown groups
            try:
                if self._root is None:
                    store = zarr_store(self.loc, read_only=self.read_only)
                    self._root = zarr.open_group(
                        StrictChunks(store, self._zero_chunks),
                        mode="r" if self.read_only else "r+",
                    )
                # Every name the layout has is an array of the root (create() made them so).
                self._arrays[group] = cast("AnyArray", self._root[group])
            except (KeyError, FileNotFoundError) as exc:
                raise NotFound(
                    f"the trajectory store at {self.url} has no array {group!r}: "
                    "it was deleted or is incomplete"
                ) from exc
        return self._arrays[group]

    def _lenient_array(self, group: str) -> AnyArray:
        """The array as zarr reads it by default (a missing chunk is the fill value): for
        hashing whole rows, where the sha256 itself tells zeros that were never stored from
        lost data."""
        return zarr.open_array(zarr_store(self.loc, read_only=True), path=group, mode="r")

    def _check_still_there(self) -> None:
        # zarr returns the fill value for chunks that are not there, so reads from a store
        # deleted under an open handle would be zeros: a real error is better.
        if not self.loc.exists(MANIFEST):
            raise NotFound(f"the trajectory store at {self.url} was deleted while it was read")
