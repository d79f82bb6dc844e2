"""Chunks that must be there: a zarr store wrapper that refuses to read a missing chunk.

zarr answers a chunk that is not in the store with the array's fill value, so a chunk deleted
or lost in a power cut would read as zeros. Reads of committed rows go through `StrictChunks`,
which raises `MissingChunk` instead; the trajectory store then decides. zarr also leaves out
chunks whose values all equal the fill value (write_empty_chunks is off), so a missing chunk
is not always lost data: only the row's sha256 can tell, and a row it has vouched for is
`allowed` from then on. No extra I/O is spent: the answer "not there" comes from the very read
that fetches the chunk.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, Iterable
from typing import TYPE_CHECKING

from zarr.abc.store import Store
from zarr.storage import WrapperStore

if TYPE_CHECKING:
    from zarr.abc.store import ByteRequest
    from zarr.core.buffer import Buffer, BufferPrototype

# `<array>/c/<row>/<column chunk>`: zarr v3's default chunk key encoding, which every store
# tinysub creates uses. Keys that do not match (metadata) are never refused.
_CHUNK_KEY = re.compile(r"^(?P<array>.+)/c[/.](?P<row>\d+)[/.]\d+$")


class MissingChunk(Exception):
    """A chunk of a row was not in the store. Not a TinysubError on purpose: it never leaves
    the trajectory store, which turns it into NotFound or StorageError."""

    def __init__(self, key: str, array: str, row: int) -> None:
        super().__init__(f"chunk {key} is not in the store")
        self.key = key
        self.array = array
        self.row = row


def chunk_row(key: str) -> tuple[str, int] | None:
    """(array, row) of a chunk key of a 2-d array, or None for any other key."""
    m = _CHUNK_KEY.match(key)
    return (m["array"], int(m["row"])) if m else None


class StrictChunks(WrapperStore[Store]):
    """Delegates everything to `store`, but a chunk that is not there raises `MissingChunk`
    unless its (array, row) is in `allowed` (a set its owner shares and adds to)."""

    def __init__(self, store: Store, allowed: set[tuple[str, int]] | None = None) -> None:
        super().__init__(store)
        self.allowed = allowed if allowed is not None else set()

    def _with_store(self, store: Store) -> StrictChunks:
        return type(self)(store, self.allowed)

    def _check(self, key: str) -> None:
        where = chunk_row(key)
        if where is not None and where not in self.allowed:
            raise MissingChunk(key, *where)

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        value = await self._store.get(key, prototype, byte_range)
        if value is None:
            self._check(key)
        return value

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        key_ranges = list(key_ranges)
        values = await self._store.get_partial_values(prototype, key_ranges)
        for (key, _), value in zip(key_ranges, values, strict=True):
            if value is None:
                self._check(key)
        return values

    async def _get_many(
        self, requests: Iterable[tuple[str, BufferPrototype, ByteRequest | None]]
    ) -> AsyncGenerator[tuple[str, Buffer | None], None]:
        async for key, value in self._store._get_many(requests):
            if value is None:
                self._check(key)
            yield key, value
