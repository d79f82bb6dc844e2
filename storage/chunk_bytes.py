"""A basis layer's bytes straight from its stored chunks, without zarr's decode pipeline.

A basis layer is a (D, k) float32 array in row chunks of (chunk_rows, k), encoded as plain
little-endian bytes followed by a crc32c (storage/basis.py writes it so). A chunk's stored
object is therefore the layer's own C-order bytes for those rows plus a 4-byte checksum: serving
a byte range needs one read of the object and a checksum, where the array route decodes into
a buffer, copies it into an output array and copies that into `bytes` again (three copies of
every byte, which held registry pulls to ~450 MB/s).

Arrays encoded any other way (a future codec, a compressor) have no such reader; callers fall
back to the array route.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import google_crc32c
import numpy as np
from zarr.codecs import BytesCodec, Crc32cCodec
from zarr.core.metadata import ArrayV3Metadata

from storage.errors import InvalidInput, NotFound, StorageError
from storage.objects import Location

if TYPE_CHECKING:
    from zarr.types import AnyArray

_CRC_BYTES = 4


def plain_chunks(arr: AnyArray) -> bool:
    """Whether the array's chunks are its raw little-endian bytes plus a crc32c, row-chunked."""
    if not isinstance(arr.metadata, ArrayV3Metadata):
        return False
    codecs = tuple(arr.metadata.codecs)
    return (
        len(codecs) == 2
        and isinstance(codecs[0], BytesCodec)
        and codecs[0].endian is not None
        and codecs[0].endian.value == "little"
        and isinstance(codecs[1], Crc32cCodec)
        and arr.dtype == "float32"
        and arr.ndim == 2
        and arr.chunks[1] == arr.shape[1]
    )


def iter_layer_bytes(
    loc: Location,
    name: str,
    arr: AnyArray,
    start: int,
    stop: int,
    still_there: Callable[[], bool],
) -> Iterator[memoryview]:
    """The array's C-order bytes in [start, stop), one stored chunk per item (views into the
    object read, never copied). Each chunk's crc32c is checked before any of its bytes are
    given out: a mismatch is a StorageError. A chunk that was never written holds the fill value
    (zarr skips all-zero chunks) unless the basis was deleted meanwhile (`still_there()` is
    false), which is NotFound: vanished chunks are never served as zeros."""
    rows, rank = arr.shape
    chunk_rows = arr.chunks[0]
    row_bytes = 4 * rank
    chunk_bytes = chunk_rows * row_bytes
    pos = start
    while pos < stop:
        index = pos // chunk_bytes
        payload = _read_chunk(loc, name, arr, index, chunk_bytes, still_there)
        # An edge chunk is stored at full chunk shape; only the rows the array has are served.
        have = min(chunk_bytes, (rows - index * chunk_rows) * row_bytes)
        lo = pos - index * chunk_bytes
        hi = min(have, stop - index * chunk_bytes)
        yield payload[lo:hi]
        pos = index * chunk_bytes + hi


def _read_chunk(
    loc: Location,
    name: str,
    arr: AnyArray,
    index: int,
    chunk_bytes: int,
    still_there: Callable[[], bool],
) -> memoryview:
    key = arr.metadata.encode_chunk_key((index, 0))
    try:
        raw = loc.read_bytes(name, key)
    except NotFound:
        raw = None
    except OSError as exc:
        raise StorageError(
            f"reading chunk {key} of layer {name!r} at {loc.url} failed: {exc}"
        ) from exc
    if not still_there():
        raise NotFound(f"the basis at {loc.url} was deleted while it was read")
    if raw is None:
        return memoryview(bytes(chunk_bytes))  # never written: all fill value (0.0)
    payload = memoryview(raw)[:-_CRC_BYTES]
    stored = int.from_bytes(raw[-_CRC_BYTES:], "little")
    # google_crc32c takes buffers through numpy, not memoryviews (as zarr's own codec does).
    if len(payload) != chunk_bytes or google_crc32c.value(np.frombuffer(payload, "B")) != stored:
        raise StorageError(
            f"reading layer {name!r} of {loc.url} failed (a chunk may be corrupt): chunk {key} "
            "does not match its crc32c"
        )
    return payload


def write_layer_rows(loc: Location, name: str, arr: AnyArray, start: int, block: Any) -> None:
    """Rows [start, start + len(block)) of a plain-chunk layer, written as whole chunk objects:
    the rows' little-endian bytes, zero rows past the array's end in an edge chunk, then the
    crc32c of all that, exactly what zarr stores for them. Each object is written to a temporary
    name and renamed into place, as zarr does. The block must cover whole chunks (the last one
    may end at the array's end), which pass 2's column blocks do by construction.

    Why not zarr's own write: it runs every chunk's encode (an `np.append` copy for the crc),
    an all-fill-value check and the file write on one I/O thread shared by all workers; here
    each worker writes its own chunks."""
    rows, rank = arr.shape
    chunk_rows = arr.chunks[0]
    stop = start + block.shape[0]
    if block.ndim != 2 or block.shape[1] != rank:
        raise InvalidInput(f"rows of layer {name!r} have {rank} columns, got shape {block.shape}")
    if start % chunk_rows or not (stop % chunk_rows == 0 or stop == rows) or stop > rows:
        raise InvalidInput(
            f"rows [{start}, {stop}) of layer {name!r} do not cover whole chunks of {chunk_rows}"
        )
    data = np.ascontiguousarray(block, dtype="<f4")
    for r0 in range(start, stop, chunk_rows):
        piece = data[r0 - start : min(r0 + chunk_rows, stop) - start]
        parts: list[Any] = [piece.reshape(-1).view("B")]
        if len(piece) < chunk_rows:  # an edge chunk is stored at full shape, padded with 0.0
            parts.append(np.zeros((chunk_rows - len(piece)) * rank * 4, dtype="B"))
        crc = 0
        for part in parts:
            crc = google_crc32c.extend(crc, part)
        parts.append(np.frombuffer(crc.to_bytes(_CRC_BYTES, "little"), "B"))
        key = arr.metadata.encode_chunk_key((r0 // chunk_rows, 0))
        _put_object(loc, f"{name}/{key}", parts)


def _put_object(loc: Location, key: str, parts: list[Any]) -> None:
    """One object, atomically; an OSError (a full disk: ENOSPC) goes to the caller as it is."""
    path = loc.path(key)
    if not loc.is_local:  # an object store's PUT is atomic
        loc.fs.pipe_file(path, b"".join(parts))
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{uuid.uuid4().hex}.partial"
    try:
        with open(tmp, "wb") as f:
            for part in parts:
                f.write(part)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
