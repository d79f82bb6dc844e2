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

Modules: `manifest` (create a store, read its manifest), `handle` (an open store's state),
`writing` and `reading` (the two halves of `TrajectoryStore`), `store` (the class itself).
"""

from storage.rows import RowInfo, encode_row
from storage.trajectory.manifest import DEFAULT_CAPACITY, DEFAULT_CHUNK_COLS, FORMAT, MANIFEST
from storage.trajectory.store import TrajectoryStore
from storage.trajectory.writing import ROW_BLOCK_VALUES

__all__ = [
    "TrajectoryStore",
    "RowInfo",
    "FORMAT",
    "MANIFEST",
    "DEFAULT_CHUNK_COLS",
    "DEFAULT_CAPACITY",
    "ROW_BLOCK_VALUES",
    "encode_row",
]
