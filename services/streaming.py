"""HTTP caching and byte ranges for basis layers: ETag = the layer's sha256, one byte range per
request (RFC 9110 section 14), bodies streamed block by block from the store."""

from __future__ import annotations

import re
from collections.abc import Iterator

from storage.errors import RangeNotSatisfiable

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def quote_etag(value: str) -> str:
    return f'"{value}"'


def etag_matches(header: str | None, etag: str) -> bool:
    """If-None-Match semantics: weak comparison against a list of tags or '*'."""
    if not header:
        return False
    if header.strip() == "*":
        return True
    tags = [t.strip().removeprefix("W/") for t in header.split(",")]
    return etag in tags


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """A single `bytes=` range as [start, stop), or None for the whole body.

    Unknown units, several ranges and malformed headers are ignored (the whole body is sent, as
    RFC 9110 allows); a well-formed range that starts past the end is not satisfiable.
    """
    if not header:
        return None
    m = _RANGE.fullmatch(header.strip())
    if m is None:
        return None
    first, last = m.group(1), m.group(2)
    if not first and not last:
        return None
    if not first:  # suffix: the last N bytes
        n = int(last)
        if n == 0 or size == 0:
            raise RangeNotSatisfiable(
                f"range {header!r} selects no bytes of {size}", detail={"size": size}
            )
        return max(0, size - n), size
    start = int(first)
    stop = size if not last else int(last) + 1
    if last and stop <= start:
        return None  # invalid: last < first; ignore the header
    if start >= size:
        raise RangeNotSatisfiable(
            f"range {header!r} starts at or past the end of {size} bytes",
            detail={"size": size},
        )
    return start, min(stop, size)


SEND_BYTES = 1 << 20


def sliced(blocks: Iterator[bytes], size: int = SEND_BYTES) -> Iterator[memoryview]:
    """Hand the server at most `size` bytes at a time (views, no copies): it then waits for the
    socket to drain between slices instead of buffering a whole store chunk for the client."""
    for block in blocks:
        view = memoryview(block)
        for a in range(0, len(view), size):
            yield view[a : a + size]


def prefetched(blocks: Iterator[bytes]) -> Iterator[bytes]:
    """Read the first block before the response starts, so a failing store (a corrupt first
    chunk, a missing array) becomes an error response instead of a truncated body."""
    first = next(blocks, None)

    def gen() -> Iterator[bytes]:
        if first is not None:
            yield first
        yield from blocks

    return gen()
