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

from client.cache import BasisCache
from client.errors import raise_for_response
from storage.errors import StorageError

_DOWNLOAD_BLOCK = 1 << 20  # bytes hashed per read when resuming from a partial file


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
) -> None:
    """Stream one layer into the cache, verifying its sha256; resume a partial file."""
    from filelock import FileLock

    sha, size = info["sha256"], int(info["nbytes"])
    final = cache.blob_path(sha)
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = final.with_name(sha + ".incomplete")
    with FileLock(str(final) + ".lock"):
        if cache.has_blob(sha, size):
            return
        h = hashlib.sha256()
        have = partial.stat().st_size if partial.exists() else 0
        if have > size:
            partial.unlink()
            have = 0
        if have:
            with open(partial, "rb") as f:
                for block in iter(lambda: f.read(_DOWNLOAD_BLOCK), b""):
                    h.update(block)
        extra = {"If-Range": f'"{sha}"', "Range": f"bytes={have}-"} if have else {}
        if have < size:
            with http.stream(
                "GET", base_url + info["url"], headers={**headers, **extra}
            ) as response:
                raise_for_response(response)
                mode = "ab" if response.status_code == 206 else "wb"
                if mode == "wb":
                    h = hashlib.sha256()
                with open(partial, mode) as f:
                    write_hashed(response.iter_bytes(), f, h, bar)
        if partial.stat().st_size != size or h.hexdigest() != sha:
            partial.unlink(missing_ok=True)
            raise StorageError(
                f"layer {info['name']!r} arrived with the wrong size or sha256 "
                f"(expected {sha[:12]}); nothing was cached"
            )
        os.replace(partial, final)


def write_hashed(blocks: Iterator[bytes], f, h, bar) -> None:
    """Write and hash blocks on a second thread while this one receives the next: socket reads,
    file writes and sha256 all release the GIL, so the two overlap (about 2x on loopback)."""
    pending: queue.Queue = queue.Queue(maxsize=16)
    failed: list[BaseException] = []

    def sink() -> None:
        while (block := pending.get()) is not None:
            if failed:
                continue  # keep draining so the receiver never blocks on a full queue
            try:
                f.write(block)
                h.update(block)
                bar(len(block))
            except BaseException as exc:  # noqa: BLE001 - re-raised on the receiving thread
                failed.append(exc)

    worker = threading.Thread(target=sink, name="tinysub-download-sink", daemon=True)
    worker.start()
    try:
        for block in blocks:
            pending.put(block)
            if failed:
                break
    finally:
        pending.put(None)
        worker.join()
    if failed:
        raise failed[0]


@contextlib.contextmanager
def progress_bar(enabled: bool, description: str):
    """A byte-count callback, backed by a rich progress bar on stderr when enabled."""
    if not enabled:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TransferSpeedColumn,
    )

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=Console(stderr=True),
    ) as bar:
        task = bar.add_task(description, total=None)
        yield lambda n: bar.advance(task, n)
