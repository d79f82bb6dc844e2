"""One interface for running chunk tasks: a local thread pool, Dask, or Ray.

Basis computations are two map phases over column blocks: pass 1 maps blocks to small float64
Gram matrices and sums them per key (layer), pass 2 maps blocks to writes of V. Tasks carry
store URLs, not data: each task reads its block on the worker that runs it. Results are small
(t x t), and sums are reduced as a tree so no single node adds up thousands of them serially.
"""

from __future__ import annotations

import operator
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Sequence
from typing import Any

ProgressFn = Callable[[int], None]


class Executor(ABC):
    """Runs picklable top-level functions over task items."""

    name: str = "base"

    @abstractmethod
    def map(
        self, fn: Callable[[Any], Any], items: Sequence[Any], progress: ProgressFn | None = None
    ) -> list[Any]:
        """fn(item) for every item, results in item order. progress(1) after each one."""

    def map_reduce(
        self,
        fn: Callable[[Any], Any],
        items: Sequence[Any],
        key: Callable[[Any], Hashable],
        combine: Callable[[Any, Any], Any] = operator.add,
        progress: ProgressFn | None = None,
    ) -> dict[Hashable, Any]:
        """Sum fn(item) per key(item). Subclasses reduce on the cluster.

        The sum is a pairwise tree in item order, the same association the Dask and Ray
        executors use: float addition is not associative, so this is what makes every
        executor (and the in-memory kernels) produce the same bytes.
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

    def __exit__(self, *exc) -> None:
        self.close()


def tree_reduce(values: list[Any], combine: Callable[[Any, Any], Any]) -> Any:
    """Pairwise reduction: depth log2(n) instead of a chain of n."""
    while len(values) > 1:
        nxt = [combine(values[i], values[i + 1]) for i in range(0, len(values) - 1, 2)]
        if len(values) % 2:
            nxt.append(values[-1])
        values = nxt
    return values[0]


def group_indices(
    items: Sequence[Any], key: Callable[[Any], Hashable]
) -> dict[Hashable, list[int]]:
    groups: dict[Hashable, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(key(item), []).append(i)
    return groups
