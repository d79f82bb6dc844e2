"""The default executor: a thread pool in this process.

Threads suffice because the work is in BLAS and zarr's I/O, both of which release the GIL.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

from worker.executors.base import Executor, ProgressFn


class LocalExecutor(Executor):
    name = "local"

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or min(4, os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(
            max_workers=self.workers, thread_name_prefix="tinysub-local"
        )

    def map(
        self, fn: Callable[[Any], Any], items: Sequence[Any], progress: ProgressFn | None = None
    ) -> list[Any]:
        futures = {self._pool.submit(fn, item): i for i, item in enumerate(items)}
        results: list[Any] = [None] * len(items)
        try:
            for fut in as_completed(futures):
                results[futures[fut]] = fut.result()
                if progress:
                    progress(1)
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise
        return results

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
