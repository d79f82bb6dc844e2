"""The default executor: a thread pool in this process.

Threads suffice because the work is in BLAS and zarr's I/O, both of which release the GIL.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed, wait
from typing import Any

from storage.errors import InvalidInput
from worker.executors.base import DRAIN_SECONDS, Executor, ProgressFn, task_error
from worker.executors.memory import release_large_buffers


class LocalExecutor(Executor):
    """Runs tasks on `workers` threads (default: the number of CPUs, at most 4).

    Each task holds one column block in memory (about 3 x rows x block_cols x 4 bytes with its
    output and the encoded write), so `workers` x that bounds the memory of a computation; see
    worker.executors.memory for why freed blocks are handed back to the system.
    """

    name = "local"

    def __init__(self, workers: int | None = None) -> None:
        if workers is not None and workers < 1:
            raise InvalidInput(f"workers must be at least 1, got {workers}")
        self.workers = workers or min(4, os.cpu_count() or 1)
        release_large_buffers()
        self._pool = ThreadPoolExecutor(
            max_workers=self.workers, thread_name_prefix="tinysub-local"
        )

    def map(
        self, fn: Callable[[Any], Any], items: Sequence[Any], progress: ProgressFn | None = None
    ) -> list[Any]:
        futures = {self._pool.submit(fn, item): i for i, item in enumerate(items)}
        try:
            for fut in as_completed(futures):
                exc = fut.exception()
                if exc is not None:
                    raise task_error(exc, fn, items[futures[fut]], self.name)
                if progress:
                    progress(1)
        except BaseException:
            for fut in futures:
                fut.cancel()
            # Threads cannot be stopped: let the running tasks end before the caller cleans up.
            wait(futures, timeout=DRAIN_SECONDS)
            raise
        return [fut.result() for fut in futures]

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
