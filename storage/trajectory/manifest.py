"""A trajectory store as a whole on disk: creating its arrays and manifest, reading the manifest.

The manifest (`MANIFEST`) is written last when a store is created and deleted first when it is
overwritten: its presence is what makes a directory a store.
"""

from __future__ import annotations

import time
from typing import Any

import zarr
from zarr.codecs import BytesCodec, Crc32cCodec

from storage.arrays import STORAGE_DTYPES, check_dtype
from storage.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    StorageError,
    TinysubError,
    storage_error,
)
from storage.layout import Layout
from storage.objects import Location, zarr_store
from storage.rows import ROWS_DIR

FORMAT = "tinysub.trajectory/1"
MANIFEST = "tinysub.json"
DEFAULT_CHUNK_COLS = 1 << 16  # 256 KiB of float32 per chunk: see docs/architecture.md
DEFAULT_CAPACITY = 128


def create_store(
    loc: Location,
    layout: Layout,
    *,
    model_name: str,
    revision: str | None,
    dtype: str,
    chunk_cols: int,
    capacity: int,
    overwrite: bool,
    attrs: dict[str, Any] | None,
) -> dict[str, Any]:
    """Create an empty store at `loc` (one zarr array per group, then the manifest) and
    return its manifest. Refuses to replace a store or foreign data unless `overwrite`."""
    check_dtype(dtype)
    if chunk_cols < 1 or capacity < 1:
        raise InvalidInput("chunk_cols and capacity must be positive")
    _clear(loc, layout, overwrite)
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
    return manifest


def _clear(loc: Location, layout: Layout, overwrite: bool) -> None:
    """Make room for a new store at `loc`: delete an old store or a half-created one when
    `overwrite` allows it, refuse otherwise."""
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


def read_manifest(loc: Location) -> dict[str, Any]:
    """The manifest of the store at `loc`: NotFound without one, StorageError for another
    format."""
    if not loc.exists(MANIFEST):
        raise NotFound(f"no trajectory store at {loc.url} (no {MANIFEST})")
    manifest: dict[str, Any] = loc.read_json(MANIFEST)
    if manifest.get("format") != FORMAT:
        raise StorageError(f"{loc.url} holds format {manifest.get('format')!r}, not {FORMAT!r}")
    return manifest
