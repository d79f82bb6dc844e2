"""Bytes in and out of the registry.

Out: HTTP caching and byte ranges for basis layers: ETag = the layer's sha256, one byte range per
request (RFC 9110 section 14), bodies streamed block by block from the store.

In: upload parts are spooled to a temporary file as they arrive (never held whole in memory),
and at most `max_concurrent_uploads` of them are received at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import IO, Any

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request

from storage.errors import RangeNotSatisfiable, storage_error

_RANGE = re.compile(r"^bytes=([0-9]*)-([0-9]*)$")
# int() refuses more than 4,300 digits (a ValueError, which was a 500). A position of more than
# 18 significant digits is past the end of any layer, so it stands for this instead.
_PAST_ANY_END = 1 << 63
_SHOWN = 64  # characters of a refused header echoed in the error message


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
        n = _position(last)
        if n == 0 or size == 0:
            raise RangeNotSatisfiable(
                f"range {_shown(header)!r} selects no bytes of {size}", detail={"size": size}
            )
        return max(0, size - n), size
    start = _position(first)
    stop = size if not last else _position(last) + 1
    if last and stop <= start:
        return None  # invalid: last < first; ignore the header
    if start >= size:
        raise RangeNotSatisfiable(
            f"range {_shown(header)!r} starts at or past the end of {size} bytes",
            detail={"size": size},
        )
    return start, min(stop, size)


def _position(digits: str) -> int:
    significant = digits.lstrip("0") or "0"
    return int(significant) if len(significant) <= 18 else _PAST_ANY_END


def _shown(header: str) -> str:
    return header if len(header) <= _SHOWN else header[: _SHOWN - 3] + "..."


SEND_BYTES = 1 << 20


Bytes = bytes | memoryview


async def read_ahead(blocks: Iterator[Bytes], size: int = SEND_BYTES) -> AsyncIterator[memoryview]:
    """Send each block while the next one is read on a worker thread (reading from the store and
    writing to the socket overlap), handing the server at most `size` bytes at a time (views, no
    copies): it then waits for the socket to drain between slices instead of buffering a whole
    store chunk for the client."""
    loop = asyncio.get_running_loop()

    def take() -> Bytes | None:
        return next(blocks, None)

    pending = loop.create_task(run_in_threadpool(take))
    try:
        while (block := await pending) is not None:
            pending = loop.create_task(run_in_threadpool(take))
            view = memoryview(block)
            for a in range(0, len(view), size):
                yield view[a : a + size]
    finally:
        # A client that went away: the read in flight finishes on its thread, unused.
        pending.cancel()


def prefetched(blocks: Iterator[Bytes]) -> Iterator[Bytes]:
    """Read the first block before the response starts, so a failing store (a corrupt first
    chunk, a missing array) becomes an error response instead of a truncated body."""
    first = next(blocks, None)

    def gen() -> Iterator[Bytes]:
        if first is not None:
            yield first
        yield from blocks

    return gen()


# ------------------------------------------------------------------------------- uploads
RETRY_AFTER_SECONDS = 1
SPOOL_PREFIX = "tinysub-part-"


class UploadSlots:
    """At most `limit` uploads received at a time; one more is refused at once (503 with
    Retry-After) rather than queued: a queued request would still hold its connection and socket
    buffers while it waits, which is what the bound is there to prevent."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._used = 0
        self._lock = threading.Lock()  # TestClients may drive one app from several threads

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        with self._lock:
            if self._used >= self.limit:
                raise HTTPException(
                    503,
                    f"the registry is receiving {self.limit} uploads already "
                    f"(max_concurrent_uploads); retry in {RETRY_AFTER_SECONDS} s",
                    headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
                )
            self._used += 1
        try:
            yield
        finally:
            with self._lock:
                self._used -= 1


@dataclass
class SpooledBody:
    """A request body in a temporary file (deleted on close), with its size and sha256."""

    file: IO[bytes]
    nbytes: int
    sha256: str

    @property
    def path(self) -> str:
        return self.file.name

    def blocks(self, size: int = 1 << 20) -> Iterator[bytes]:
        """The body from its start, `size` bytes at a time (keep `size` a multiple of 4 to get
        whole float32 values in every block)."""
        self.file.seek(0)
        while block := self.file.read(size):
            yield block

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> SpooledBody:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


async def spool_body(request: Request, directory: str | None = None) -> SpooledBody:
    """Write the request body to a temporary file in `directory` (default: the system's) as it
    arrives, hashing it on the way; only one received message is in memory at a time. Disk
    writes run in worker threads so that a slow disk does not stall the event loop."""
    try:
        # Named, so that object stores can upload it with their own all-or-nothing put_file.
        file = await run_in_threadpool(
            tempfile.NamedTemporaryFile, dir=directory, prefix=SPOOL_PREFIX
        )
    except OSError as exc:
        raise storage_error("could not open a spool file for the upload", exc) from exc
    digest, nbytes = hashlib.sha256(), 0
    try:
        async for chunk in request.stream():
            if chunk:
                await run_in_threadpool(_append, file, digest, chunk)
                nbytes += len(chunk)
        await run_in_threadpool(file.flush)
    except BaseException:
        file.close()
        raise
    return SpooledBody(file=file, nbytes=nbytes, sha256=digest.hexdigest())


def _append(file: IO[bytes], digest: Any, chunk: bytes) -> None:
    digest.update(chunk)
    try:
        file.write(chunk)
    except OSError as exc:  # a full spool disk: 507, like a full store
        raise storage_error("could not spool the upload", exc) from exc
