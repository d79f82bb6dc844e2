"""Executors for chunk tasks: `local` (threads, the default), `dask`, `ray`."""

from __future__ import annotations

from storage.errors import InvalidInput
from worker.executors.base import Executor, TaskFailed
from worker.executors.local import LocalExecutor

EXECUTORS = ("local", "dask", "ray")


def make_executor(
    name: str = "local", address: str | None = None, workers: int | None = None
) -> Executor:
    """Build an executor by name; `address` points Dask or Ray at a running cluster."""
    if name == "local":
        return LocalExecutor(workers)
    if name == "dask":
        from worker.executors.dask import DaskExecutor  # noqa: PLC0415 - optional (dask extra)

        return DaskExecutor(address, workers=workers)
    if name == "ray":
        from worker.executors.ray import RayExecutor  # noqa: PLC0415 - optional (ray extra)

        return RayExecutor(address, workers=workers)
    raise InvalidInput(f"unknown executor {name!r}; use one of {list(EXECUTORS)}")


__all__ = ["EXECUTORS", "Executor", "LocalExecutor", "TaskFailed", "make_executor"]
