"""One interface for running chunk tasks: a local thread pool, Dask, or Ray.

Basis computations are two map phases over column blocks: pass 1 maps blocks to small float64
Gram matrices and sums them per key (layer), pass 2 maps blocks to writes of V. Tasks carry
store URLs, not data: each task reads its block on the worker that runs it. Results are small
(t x t), and sums are reduced as a tree so no single node adds up thousands of them serially.

Every executor reduces with the *same* tree (pairs of neighbours in item order, see
`tree_reduce`): floating-point addition is not associative, so this is what makes a basis
bit-identical whichever executor computed it.

A task that fails raises on the caller's side: a `TinysubError` raised by the task (a corrupt
chunk, a missing row) comes back as itself, so callers and the CLI handle it as if it had been
raised locally; anything else comes back as `TaskFailed`, naming the function and the item.
Either way the tasks still pending are cancelled, and the call raises only once none of its
tasks is still running (waiting up to DRAIN_SECONDS): a task that was running when another one
failed would otherwise go on writing its block after the caller cleaned up what the failed
computation had written.
"""

from __future__ import annotations

import operator
import reprlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Sequence
from typing import Any, TypeVar

# TaskFailed is re-exported: callers catch it from here (and from worker.executors).
from storage.errors import TaskFailed as TaskFailed
from storage.errors import TinysubError

ProgressFn = Callable[[int], None]
# The reduction key of map_reduce: results come back keyed by what `key` returns.
K = TypeVar("K", bound=Hashable)
# The variable that picks the kernels' device (cpu, cuda, auto): worker.svd.backend reads it, and
# it is defined here, one layer down, because executors forward it to their remote workers.
DEVICE_ENV = "TINYSUB_DEVICE"
DRAIN_SECONDS = 120.0  # longest wait for running tasks to end after a failure


class Executor(ABC):
    """Runs picklable top-level functions over task items."""

    name: str = "base"

    @abstractmethod
    def map(
        self, fn: Callable[[Any], Any], items: Sequence[Any], progress: ProgressFn | None = None
    ) -> list[Any]:
        """fn(item) for every item, results in item order. progress(1) once per finished item."""

    def map_reduce(
        self,
        fn: Callable[[Any], Any],
        items: Sequence[Any],
        key: Callable[[Any], K],
        combine: Callable[[Any, Any], Any] = operator.add,
        progress: ProgressFn | None = None,
    ) -> dict[K, Any]:
        """Combine fn(item) per key(item) with `tree_reduce` (in item order within a key).

        `combine` must be associative; it need not be commutative. Subclasses run the same
        tree on the cluster so that partial results never travel through the caller.
        """
        results = self.map(fn, items, progress)
        return {
            k: tree_reduce([results[i] for i in idx], combine)
            for k, idx in group_indices(items, key).items()
        }

    def close(self) -> None:
        """Release what the executor started (clusters it created, thread pools)."""
        return None

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def tree_reduce(values: Sequence[Any], combine: Callable[[Any, Any], Any]) -> Any:
    """Pairwise reduction of neighbours in order: ((v0+v1)+(v2+v3))+v4. Depth ceil(log2 n).

    This is the one reduction plan of every executor; Dask and Ray pass a `combine` that submits
    a task and returns its future, so the same tree runs on the cluster.
    """
    level = list(values)
    if not level:
        raise ValueError("nothing to reduce")
    while len(level) > 1:
        nxt = [combine(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def group_indices(items: Sequence[Any], key: Callable[[Any], K]) -> dict[K, list[int]]:
    """Positions of the items of each key, in item order (keys in order of first appearance)."""
    groups: dict[K, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(key(item), []).append(i)
    return groups


def describe(item: Any) -> str:
    """A short name for a task item in error messages (items may hold large arrays)."""
    block = getattr(item, "block", item)
    group, start, stop = (getattr(block, a, None) for a in ("group", "start", "stop"))
    if group is not None and start is not None:
        return f"{type(item).__name__}({group}[{start}:{stop}])"
    if group is not None:
        return f"{type(item).__name__}({group} of {getattr(item, 'url', '?')})"
    return reprlib.repr(item)


def task_error(
    exc: BaseException, fn: Callable[..., Any], item: Any, executor: str
) -> BaseException:
    """The exception to raise for a failed task: the task's own TinysubError, else TaskFailed.

    Either way the message says which function failed on which item, and on which executor.
    """
    where = f"{getattr(fn, '__qualname__', fn)} failed on {describe(item)} ({executor} executor)"
    if isinstance(exc, TinysubError):
        exc.add_note(where)
        return exc
    err = TaskFailed(f"{where}: {type(exc).__name__}: {exc}")
    err.__cause__ = exc
    return err
