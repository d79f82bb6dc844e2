"""The trajectory store: a task's checkpoints, one Zarr array (t, D_group) per parameter group.

On-disk format (under the store's URL)::

    tinysub.json        manifest: model, revision, storage dtype, chunking, layout (+ hash)
    zarr.json           the zarr v3 root group
    layer.0/ ...        one zarr array per group, shape (capacity, D), chunks (1, chunk_cols)
    _rows/00000000.json commit marker of row 0 (theta0): step, epoch, metrics, sha256 per group
    _rows/index/...     the row index: the markers' contents, 64 rows a document (row_index.py)

Each checkpoint row lives in its own chunks, so writers never share a chunk. A row is visible only
once its marker exists, and the marker is written (atomically) after every group of the row has
been written: a crash mid-checkpoint leaves the committed rows readable, the store re-openable,
and the next append simply rewrites the half-written row. Chunks carry a crc32c checksum, so a
corrupted chunk fails on read instead of being returned. Opening reads the row index, not every
marker: a few reads whatever the row count; the index is written after the marker and can only
lag behind it, which opening makes up for by reading the markers past it.

Durability (local disks): a row's chunk files, the arrays' metadata and the directories leading
to them are fsynced before its marker is written, and the marker itself is fsynced with its
directory, so after a power cut the last row is either committed with all its bytes or absent.
A chunk of a committed row that is missing fails every read (zarr would return zeros for it)
unless the row's sha256 shows it is one zarr never stored because it held only zeros.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import numpy.typing as npt

from storage.arrays import STORAGE_DTYPES, check_dtype, decode, digest, encode
from storage.chunks import MissingChunk, StrictChunks
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
from storage.layout import Layout
from storage.objects import Location, zarr_store
from storage.row_index import RowIndex
from storage.rows import ROWS_DIR, RowInfo, encode_row, row_key

if TYPE_CHECKING:
    from _hashlib import HASH

    from zarr import Group
    from zarr.types import AnyArray

FORMAT = "tinysub.trajectory/1"
MANIFEST = "tinysub.json"
DEFAULT_CHUNK_COLS = 1 << 16  # 256 KiB of float32 per chunk: see docs/architecture.md
DEFAULT_CAPACITY = 128
ROW_BLOCK_VALUES = 1 << 18  # write_row_blocks writes ~1 MiB of float32 at a time (whole chunks)

log = logging.getLogger(__name__)


class TrajectoryStore:
    """Checkpoint rows of one task, grouped per layer. Open with `create()` or `open()`."""

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

    # ----------------------------------------------------------------------------- opening
    @classmethod
    def create(
        cls,
        url: str | os.PathLike[str],
        layout: Layout,
        *,
        model_name: str = "",
        revision: str | None = None,
        dtype: str = "float32",
        chunk_cols: int = DEFAULT_CHUNK_COLS,
        capacity: int = DEFAULT_CAPACITY,
        storage_options: dict[str, Any] | None = None,
        overwrite: bool = False,
        attrs: dict[str, Any] | None = None,
    ) -> TrajectoryStore:
        import zarr
        from zarr.codecs import BytesCodec, Crc32cCodec

        check_dtype(dtype)
        if chunk_cols < 1 or capacity < 1:
            raise InvalidInput("chunk_cols and capacity must be positive")
        loc = Location.from_url(url, storage_options)
        if loc.exists(MANIFEST):
            if not overwrite:
                raise Conflict(
                    f"a trajectory store already exists at {loc.url}; "
                    "open it to append, or pass overwrite=True"
                )
            loc.delete(MANIFEST)  # first: a reader sees "no store", never a half-deleted one
            loc.sync()  # ... and so does a reader after a power cut
            loc.delete(recursive=True)
        elif loc.exists() and loc.list():
            # A directory without a manifest is a half-created store or somebody's data:
            # only take it over when asked to.
            if not overwrite and set(loc.list()) - {"zarr.json", ROWS_DIR, *layout.group_names}:
                raise Conflict(f"{loc.url} exists and is not a tinysub store")
            loc.delete(recursive=True)
        base = loc.durable_base() if loc.is_local else None
        try:
            root = zarr.open_group(zarr_store(loc), mode="w")
            for group in layout.groups:
                root.create_array(
                    group.name,
                    shape=(capacity, group.size),
                    chunks=(1, min(chunk_cols, group.size)),
                    dtype=STORAGE_DTYPES[dtype],
                    fill_value=0,
                    compressors=[Crc32cCodec()],
                    serializer=BytesCodec(endian="little"),
                    filters=None,
                    attributes={"tinysub_dtype": dtype},
                )
            # The arrays' metadata is on the disk before the manifest that names them.
            loc.sync(["zarr.json", *(f"{g}/zarr.json" for g in layout.group_names)], base=base)
        except TinysubError:
            raise
        except OSError as exc:
            raise storage_error(f"creating the trajectory store at {loc.url} failed", exc) from exc
        manifest = {
            "format": FORMAT,
            "model_name": model_name,
            "revision": revision,
            "dtype": dtype,
            "chunk_cols": int(chunk_cols),
            "layout": layout.to_dict(),
            "created_at": time.time(),
            "attrs": dict(attrs or {}),
        }
        # The manifest is written last: its presence is what makes the store a store.
        loc.write_json_atomic(manifest, MANIFEST)
        return cls(loc, manifest, read_only=False)

    @classmethod
    def open(
        cls,
        url: str | os.PathLike[str],
        *,
        read_only: bool = True,
        storage_options: dict[str, Any] | None = None,
    ) -> TrajectoryStore:
        loc = Location.from_url(url, storage_options)
        if not loc.exists(MANIFEST):
            raise NotFound(f"no trajectory store at {loc.url} (no {MANIFEST})")
        manifest = loc.read_json(MANIFEST)
        if manifest.get("format") != FORMAT:
            raise StorageError(f"{loc.url} holds format {manifest.get('format')!r}, not {FORMAT!r}")
        return cls(loc, manifest, read_only=read_only)

    @classmethod
    def exists(
        cls, url: str | os.PathLike[str], storage_options: dict[str, Any] | None = None
    ) -> bool:
        return Location.from_url(url, storage_options).exists(MANIFEST)

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

    def _array(self, group: str) -> AnyArray:
        if group not in self._arrays:
            import zarr

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
        import zarr

        return zarr.open_array(zarr_store(self.loc, read_only=True), path=group, mode="r")

    def _check_still_there(self) -> None:
        # zarr returns the fill value for chunks that are not there, so reads from a store
        # deleted under an open handle would be zeros: a real error is better.
        if not self.loc.exists(MANIFEST):
            raise NotFound(f"the trajectory store at {self.url} was deleted while it was read")

    # ---------------------------------------------------------------------------- writing
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

    # ---------------------------------------------------------------------------- reading
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

    def summary(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "model_name": self.model_name,
            "revision": self.revision,
            "dtype": self.dtype,
            "rows": self.num_rows,
            "layout_hash": self.layout.hash,
            "rule": self.layout.rule,
            "groups": [
                {"name": g.name, "size": g.size, "params": len(g.params)}
                for g in self.layout.groups
            ],
            "bytes": self.nbytes(),
        }


__all__ = ["TrajectoryStore", "RowInfo", "FORMAT", "DEFAULT_CHUNK_COLS", "encode_row"]
