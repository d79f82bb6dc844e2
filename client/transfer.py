"""Moving layer bytes: verified, resumable downloads into the cache, and progress bars."""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from filelock import FileLock
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TransferSpeedColumn,
)

from client.cache import BasisCache
from client.errors import raise_for_response
from client.retry import RetryPolicy
from storage.errors import StorageError

_DOWNLOAD_BLOCK = 1 << 20  # bytes hashed per read when resuming from a partial file
_PIPE_BLOCK = 1 << 20  # bytes per piece handed from the socket to the write/hash threads


@dataclass(frozen=True)
class PulledBasis:
    """A basis in the local cache: its manifest and one verified file per layer."""

    task_id: str
    kind: str
    version: int
    manifest: dict[str, Any]
    files: dict[str, Path]  # layer -> raw little-endian float32 (D, k), C order

    def shape(self, layer: str) -> tuple[int, int]:
        info = next(i for i in self.manifest["layers"] if i["name"] == layer)
        return int(info["shape"][0]), int(info["shape"][1])

    def array(self, layer: str) -> np.ndarray:
        """A layer as a copy-on-write memory map (D, k) float32: nothing is read up front."""
        return np.memmap(self.files[layer], dtype="<f4", mode="c", shape=self.shape(layer))


def download_layer(
    http: httpx.Client,
    base_url: str,
    headers: dict[str, str],
    cache: BasisCache,
    info: dict,
    bar: Callable[[int], None],
    retry: RetryPolicy | None = None,
) -> None:
    """Stream one layer into the cache, verifying its sha256. A partial file (this call's
    earlier try, or an earlier process's) is continued from its last byte with Range and
    If-Range on the layer's ETag: a layer that changed since comes whole (200) and replaces
    it. `retry` decides how often a failed try is repeated."""
    sha, size = info["sha256"], int(info["nbytes"])
    final = cache.blob_path(sha)
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final) + ".lock"):
        if cache.has_blob(sha, size):
            return
        part = _Partial(final.with_name(sha + ".incomplete"), sha, size)

        def hint() -> str:
            return (
                f"{part.have:,} of {size:,} bytes of layer {info['name']!r} are kept in the "
                "cache: pull again to resume from there"
            )

        (retry or RetryPolicy(attempts=1)).call(
            lambda: _fetch(http, base_url + info["url"], headers, part, bar),
            what=f"GET {info['url']}",
            progress=lambda: part.have,
            hint=hint,
        )
        if part.have != size or part.hash.hexdigest() != sha:
            part.path.unlink(missing_ok=True)
            raise StorageError(
                f"layer {info['name']!r} arrived with the wrong size or sha256 "
                f"(expected {sha[:12]}); nothing was cached"
            )
        os.replace(part.path, final)


class _Partial:
    """A layer's `.incomplete` file: its first `have` bytes, hashed into `hash` as they came."""

    def __init__(self, path: Path, sha256: str, size: int) -> None:
        self.path, self.etag, self.size = path, f'"{sha256}"', size
        self.hash = hashlib.sha256()
        self.have = path.stat().st_size if path.exists() else 0
        if self.have > size:
            self.restart()
        elif self.have:
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(_DOWNLOAD_BLOCK), b""):
                    self.hash.update(block)

    def restart(self) -> None:
        self.path.unlink(missing_ok=True)
        self.hash, self.have = hashlib.sha256(), 0

    def received(self, n: int) -> None:
        self.have += n


def _fetch(
    http: httpx.Client, url: str, headers: dict[str, str], part: _Partial, bar: Callable
) -> None:
    """One try: the bytes of the layer from `part.have` on, appended to the partial file."""
    if part.have >= part.size:
        return
    if part.path.exists() and part.path.stat().st_size != part.have:
        os.truncate(part.path, part.have)  # bytes written but never hashed: not verified
    ranged = {"Range": f"bytes={part.have}-", "If-Range": part.etag} if part.have else {}
    with http.stream("GET", url, headers={**headers, **ranged}) as response:
        raise_for_response(response)
        if response.status_code == 206:
            expected = f"bytes {part.have}-{part.size - 1}/{part.size}"
            got = response.headers.get("content-range", "")
            if got != expected or response.headers.get("etag", part.etag) != part.etag:
                asked = part.have
                part.restart()
                raise httpx.RemoteProtocolError(
                    f"asked for bytes {asked}- of {part.etag}, the answer was {got!r} of "
                    f"{response.headers.get('etag')}; starting over",
                    request=response.request,
                )
        elif part.have:
            part.restart()  # a whole body: the layer changed, or the server ignores Range

        def received(n: int) -> None:
            part.received(n)
            bar(n)

        with open(part.path, "ab") as f:
            write_hashed(coalesced(response.iter_bytes()), f, part.hash, received)
    if part.have < part.size:  # a body that ended early without an error from httpx
        raise httpx.RemoteProtocolError(
            f"the body ended at byte {part.have:,} of {part.size:,}", request=response.request
        )


def coalesced(pieces: Iterator[bytes], size: int = _PIPE_BLOCK) -> Iterator[bytes]:
    """Pieces joined into blocks of about `size` bytes: httpx reads 64 KiB at a time, and handing
    each piece to the pipeline's threads costs more than joining them (one memcpy). When the
    body breaks off, what was received so far is still handed on before the error, so a resumed
    download loses none of it."""
    buf: list[bytes] = []
    held = 0
    try:
        for piece in pieces:
            buf.append(piece)
            held += len(piece)
            if held >= size:
                yield b"".join(buf)
                buf, held = [], 0
    except Exception:
        if buf:
            yield b"".join(buf)
        raise
    if buf:
        yield b"".join(buf)


def write_hashed(blocks: Iterator[bytes], f, h, bar) -> None:
    """Receive, write and hash as a three-stage pipeline: while this thread receives block i+1, a
    second writes block i and a third hashes block i-1. Socket reads, file writes and sha256 all
    release the GIL, so the stages overlap (hashing and writing in one thread capped loopback
    pulls at the speed of the two summed). `bar(n)` counts a block once it is both written and
    hashed, in order: a resumed download trusts exactly those bytes."""
    failed: list[BaseException] = []
    written: queue.Queue = queue.Queue(maxsize=16)
    received: queue.Queue = queue.Queue(maxsize=16)

    def stage(inbox: queue.Queue, work: Callable[[bytes], object], outbox: queue.Queue | None):
        def run() -> None:
            broken = False  # after its own failure a stage drains its inbox so no one blocks
            while (block := inbox.get()) is not None:
                if broken:
                    continue
                try:
                    work(block)
                except BaseException as exc:  # noqa: BLE001 - re-raised on the receiver
                    failed.append(exc)
                    broken = True
                    continue
                if outbox is not None:  # only what this stage finished goes on
                    outbox.put(block)
            if outbox is not None:
                outbox.put(None)

        return threading.Thread(target=run, name="tinysub-download-sink", daemon=True)

    def hash_block(block: bytes) -> None:
        h.update(block)
        bar(len(block))

    threads = [stage(received, f.write, written), stage(written, hash_block, None)]
    for t in threads:
        t.start()
    try:
        for block in blocks:
            received.put(block)
            if failed:
                break
    finally:
        received.put(None)
        for t in threads:
            t.join()
    if failed:
        raise failed[0]


@contextlib.contextmanager
def progress_bar(enabled: bool, description: str):
    """A byte-count callback, backed by a rich progress bar on stderr when enabled."""
    if not enabled:
        yield lambda n: None
        return

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=Console(stderr=True),
    ) as bar:
        task = bar.add_task(description, total=None)
        yield lambda n: bar.advance(task, n)
