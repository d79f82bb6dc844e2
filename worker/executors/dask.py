"""Dask executor: a dask.distributed Client at an address, or a LocalCluster it starts."""

from __future__ import annotations

import operator
from collections.abc import Callable, Hashable, Sequence
from typing import Any

from worker.executors.base import Executor, ProgressFn, group_indices


class DaskExecutor(Executor):
    name = "dask"

    def __init__(
        self, address: str | None = None, *, workers: int | None = None, client: Any = None
    ) -> None:
        from dask.distributed import Client, LocalCluster

        self._owned = []
        if client is not None:
            self.client = client
        elif address:
            self.client = Client(address)
            self._owned.append(self.client)
        else:
            # Processes, one thread each: BLAS in each worker gets a core to itself.
            cluster = LocalCluster(
                n_workers=workers or 2, threads_per_worker=1, processes=True, dashboard_address=None
            )
            self.client = Client(cluster)
            self._owned += [self.client, cluster]

    def map(
        self, fn: Callable[[Any], Any], items: Sequence[Any], progress: ProgressFn | None = None
    ) -> list[Any]:
        from dask.distributed import as_completed

        if not items:
            return []
        futures = self.client.map(fn, list(items), pure=False)
        if progress:
            for _ in as_completed(futures):
                progress(1)
        return self.client.gather(futures)

    def map_reduce(
        self,
        fn: Callable[[Any], Any],
        items: Sequence[Any],
        key: Callable[[Any], Hashable],
        combine: Callable[[Any, Any], Any] = operator.add,
        progress: ProgressFn | None = None,
    ) -> dict[Hashable, Any]:
        from dask.distributed import as_completed

        futures = self.client.map(fn, list(items), pure=False)
        if progress:
            for _ in as_completed(futures):
                progress(1)
        # Tree reduction on the cluster: partial sums never travel through the client.
        out = {}
        for k, idx in group_indices(items, key).items():
            level = [futures[i] for i in idx]
            while len(level) > 1:
                nxt = [
                    self.client.submit(combine, level[i], level[i + 1], pure=False)
                    for i in range(0, len(level) - 1, 2)
                ]
                if len(level) % 2:
                    nxt.append(level[-1])
                level = nxt
            out[k] = level[0]
        return dict(zip(out, self.client.gather(list(out.values())), strict=True))

    def close(self) -> None:
        for obj in self._owned:
            obj.close()
        self._owned = []
