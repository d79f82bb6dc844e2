"""The executors the job runner computes bases on: one per name, kept for the app's lifetime."""

from __future__ import annotations

import logging
import threading
from typing import Any

from services.context import Registry
from worker.executors import make_executor

log = logging.getLogger(__name__)


class ExecutorPool:
    """One executor per name, created on first use and kept for the app's lifetime (starting a
    Dask client or joining a Ray cluster per job would cost seconds)."""

    def __init__(self, registry: Registry) -> None:
        self.settings = registry.settings
        self._lock = threading.Lock()
        self._executors: dict[str, Any] = {}

    def get(self, name: str):
        with self._lock:
            if name not in self._executors:
                s = self.settings
                address = s.executor_address if name == s.executor else None
                self._executors[name] = make_executor(name, address, s.executor_workers)
            return self._executors[name]

    def discard(self, name: str) -> None:
        """Drop an executor after an unexpected failure (its cluster may be gone)."""
        with self._lock:
            ex = self._executors.pop(name, None)
        if ex is not None:
            try:
                ex.close()
            except Exception:  # noqa: BLE001 - a broken executor may fail to close
                log.warning("closing executor %s failed", name, exc_info=True)

    def close(self) -> None:
        for name in list(self._executors):
            self.discard(name)
