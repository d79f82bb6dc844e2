"""The trajectory store: a task's checkpoints, one Zarr array (t, D_group) per parameter group.

On-disk format (under the store's URL)::

    tinysub.json        manifest: model, revision, storage dtype, chunking, layout (+ hash)
    zarr.json           the zarr v3 root group
    layer.0/ ...        one zarr array per group, shape (capacity, D), chunks (1, chunk_cols)
    _rows/00000000.json commit marker of row 0 (theta0): step, epoch, metrics, sha256 per group

Each checkpoint row lives in its own chunks, so writers never share a chunk. A row is visible only
once its marker exists, and the marker is written (atomically) after every group of the row has
been written: a crash mid-checkpoint leaves the committed rows readable, the store re-openable,
and the next append simply rewrites the half-written row. Chunks carry a crc32c checksum, so a
corrupted chunk fails on read instead of being returned.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from storage.arrays import STORAGE_DTYPES, check_dtype, decode, digest
from storage.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    ReadOnly,
    StorageError,
    storage_error,
)
from storage.layout import Layout
from storage.objects import Location, zarr_store
from storage.rows import ROWS_DIR, RowInfo, encode_row, row_key

FORMAT = "tinysub.trajectory/1"
MANIFEST = "tinysub.json"
DEFAULT_CHUNK_COLS = 1 << 16  # 256 KiB of float32 per chunk: see docs/architecture.md
DEFAULT_CAPACITY = 128


class TrajectoryStore:
    """Checkpoint rows of one task, grouped per layer. Open with `create()` or `open()`."""

    def __init__(self, loc: Location, manifest: dict, *, read_only: bool) -> None:
        self.loc = loc
        self.manifest = manifest
        self.read_only = read_only
        self.layout = Layout.from_dict(manifest["layout"])
        self._root = None
        self._arrays: dict[str, Any] = {}
        self._rows: list[RowInfo] = self._scan_rows()

    # ----------------------------------------------------------------------------- opening
    @classmethod
    def create(
        cls,
        url: str | os.PathLike,
        layout: Layout,
        *,
        model_name: str = "",
        revision: str | None = None,
        dtype: str = "float32",
        chunk_cols: int = DEFAULT_CHUNK_COLS,
        capacity: int = DEFAULT_CAPACITY,
        storage_options: dict | None = None,
        overwrite: bool = False,
        attrs: dict | None = None,
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
            loc.delete(recursive=True)
        elif loc.exists() and loc.list():
            # A directory without a manifest is a half-created store or somebody's data:
            # only take it over when asked to.
            if not overwrite and set(loc.list()) - {"zarr.json", ROWS_DIR, *layout.group_names}:
                raise Conflict(f"{loc.url} exists and is not a tinysub store")
            loc.delete(recursive=True)
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
        cls, url: str | os.PathLike, *, read_only: bool = True, storage_options: dict | None = None
    ) -> TrajectoryStore:
        loc = Location.from_url(url, storage_options)
        if not loc.exists(MANIFEST):
            raise NotFound(f"no trajectory store at {loc.url} (no {MANIFEST})")
        manifest = loc.read_json(MANIFEST)
        if manifest.get("format") != FORMAT:
            raise StorageError(f"{loc.url} holds format {manifest.get('format')!r}, not {FORMAT!r}")
        return cls(loc, manifest, read_only=read_only)

    @classmethod
    def exists(cls, url: str | os.PathLike, storage_options: dict | None = None) -> bool:
        return Location.from_url(url, storage_options).exists(MANIFEST)

    # ------------------------------------------------------------------------- properties
    @property
    def url(self) -> str:
        return self.loc.url

    @property
    def dtype(self) -> str:
        return self.manifest["dtype"]

    @property
    def chunk_cols(self) -> int:
        return int(self.manifest["chunk_cols"])

    @property
    def model_name(self) -> str:
        return self.manifest.get("model_name", "")

    @property
    def revision(self) -> str | None:
        return self.manifest.get("revision")

    @property
    def num_rows(self) -> int:
        return len(self._rows)

    @property
    def rows(self) -> list[RowInfo]:
        return list(self._rows)

    @property
    def created_at(self) -> float | None:
        """When the store was created: with the URL, the identity of this store (a store
        deleted and created again at the same URL is another store)."""
        return self.manifest.get("created_at")

    def refresh(self) -> None:
        """Re-read the commit markers (another process may have appended rows).

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

    def _scan_rows(self) -> list[RowInfo]:
        # A row counts only if it and every row before it is committed: a gap means an
        # interrupted write, and rows after a gap were never acknowledged to anyone.
        names = set(self.loc.list(ROWS_DIR))
        rows: list[RowInfo] = []
        while row_key(len(rows)) in names:
            rows.append(RowInfo.from_dict(self.loc.read_json(ROWS_DIR, row_key(len(rows)))))
        return rows

    def _array(self, group: str):
        if group not in self._arrays:
            import zarr

            self.layout.group(group)  # raises a clear error for unknown groups
            try:
                if self._root is None:
                    self._root = zarr.open_group(
                        zarr_store(self.loc, read_only=self.read_only),
                        mode="r" if self.read_only else "r+",
                    )
                self._arrays[group] = self._root[group]
            except (KeyError, FileNotFoundError) as exc:
                raise NotFound(
                    f"the trajectory store at {self.url} has no array {group!r}: "
                    "it was deleted or is incomplete"
                ) from exc
        return self._arrays[group]

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
        except OSError as exc:
            raise storage_error(f"writing row {index} to {self.url} failed", exc) from exc
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
        return index

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
        self._rows[index] = info
        return info

    def _ensure_capacity(self, rows: int) -> None:
        for group in self.layout.groups:
            arr = self._array(group.name)
            if arr.shape[0] < rows:
                arr.resize((max(rows, 2 * arr.shape[0]), group.size))

    # ---------------------------------------------------------------------------- reading
    def _check_rows(self, rows: Sequence[int] | None) -> np.ndarray:
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
    ) -> np.ndarray:
        """Committed rows (all, or the given indices) of columns [start, stop) as float32."""
        size = self.layout.group(group).size
        stop = size if stop is None else stop
        if not 0 <= start <= stop <= size:
            raise InvalidInput(
                f"columns [{start}, {stop}) are outside group {group!r} of size {size}"
            )
        idx = self._check_rows(rows)
        try:
            try:
                raw = self._read(group, idx, start, stop)
            except IndexError:
                # The rows are committed, so the array has grown since this handle opened it
                # (another thread refreshed the rows): open it again and read once more.
                self._reopen_arrays()
                raw = self._read(group, idx, start, stop)
        except NotFound:
            raise
        except (KeyError, FileNotFoundError) as exc:
            raise NotFound(f"the trajectory store at {self.url} was deleted while read") from exc
        except (OSError, RuntimeError, ValueError) as exc:
            raise StorageError(
                f"reading {group!r} rows from {self.url} failed (a chunk may be corrupt): {exc}"
            ) from exc
        self._check_still_there()
        return decode(np.asarray(raw), self.dtype)

    def _read(self, group: str, idx: np.ndarray, start: int, stop: int) -> np.ndarray:
        arr = self._array(group)
        if idx.size and np.array_equal(idx, np.arange(idx[0], idx[-1] + 1)):
            raw = arr[int(idx[0]) : int(idx[-1]) + 1, start:stop]
        else:
            raw = arr.get_orthogonal_selection((idx, slice(start, stop)))
        if raw.shape[0] != idx.size:  # a slice past a stale shape is clipped, not refused
            raise IndexError(f"read {raw.shape[0]} rows of {idx.size} from {group!r}")
        return raw

    def read_row(self, index: int, group: str) -> np.ndarray:
        return self.read_block(group, rows=[index])[0]

    def column_ranges(self, group: str, block_cols: int | None = None) -> list[tuple[int, int]]:
        """Column blocks of a group aligned to the chunk grid (whole chunks per block)."""
        size = self.layout.group(group).size
        step = self.chunk_cols if block_cols is None else block_cols
        step = max(self.chunk_cols, (step // self.chunk_cols) * self.chunk_cols)
        return [(s, min(s + step, size)) for s in range(0, size, step)]

    def verify(self) -> list[str]:
        """Re-read every committed row and compare with its sha256; returns the problems."""
        problems = []
        for info in self._rows:
            for group in self.layout.group_names:
                try:
                    raw = self._array(group)[info.index, :]
                except Exception as exc:  # noqa: BLE001 - any read failure is a finding
                    problems.append(f"row {info.index} {group}: unreadable ({exc})")
                    continue
                if digest(np.asarray(raw)) != info.sha256.get(group):
                    problems.append(f"row {info.index} {group}: sha256 mismatch")
        return problems

    def summary(self) -> dict:
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
