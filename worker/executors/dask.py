"""Dask executor: a dask.distributed Client at an address, or a LocalCluster it starts.

Workers import tinysub's modules by name (tasks are pickled by reference), so the workers of a
cluster given by address need tinysub installed; a LocalCluster's worker processes inherit this
process' sys.path and environment (TINYSUB_DEVICE included). A worker uses its GPU when it has
one (see worker.svd.backend.resolve_device); nothing needs asking for.
"""

from __future__ import annotations

import logging
import operator
import time
from collections.abc import Callable, Sequence
from typing import Any

from dask.distributed import Client, LocalCluster, as_completed

from worker.executors.base import (
    DRAIN_SECONDS,
    Executor,
    K,
    ProgressFn,
    group_indices,
    task_error,
    tree_reduce,
)

log = logging.getLogger(__name__)

# How long no worker may run or hold a task of a failed computation before it counts as drained.
QUIET_SECONDS = 0.25


# Worker-side task states that may still run a task (a cancelled task that was executing is
# "cancelled" until it ends: a worker cannot stop a running task, it only drops its result).
_MAY_RUN = {"waiting", "ready", "constrained", "executing", "long-running", "cancelled", "resumed"}


def _live_keys(dask_worker: Any) -> list[str]:
    """Run on each worker: the keys of its tasks that are running or may still start (the
    scheduler's release reaches workers after the cancel call has returned)."""
    return [str(k) for k, ts in dask_worker.state.tasks.items() if ts.state in _MAY_RUN]


class DaskExecutor(Executor):
    """Run tasks on a Dask cluster.

    address: a scheduler address ("tcp://host:8786", or "tls://host:8786" with the certificates
    in Dask's configuration, as docker-compose.yml sets them: worker/executors/dask_tls.py) to
    connect to; the cluster is left running on close. client: an existing dask.distributed
    Client to use (not closed on close). With neither, a LocalCluster of `workers` processes
    (default 2) with one thread each is started and shut down on close: one thread per process
    gives each BLAS call a core to itself.
    """

    name = "dask"

    def __init__(
        self, address: str | None = None, *, workers: int | None = None, client: Any = None
    ) -> None:
        self._owned: list[Any] = []
        if client is not None:
            self.client = client
        elif address:
            self.client = Client(address)
            self._owned.append(self.client)
        else:
            cluster = LocalCluster(
                n_workers=workers or 2,
                threads_per_worker=1,
                processes=True,
                # The scheduler always serves HTTP (health, metrics); a random port keeps two
                # clusters on one host from fighting over 8787.
                dashboard_address=":0",
            )
            try:
                self.client = Client(cluster)
            except BaseException:
                cluster.close()
                raise
            self._owned += [self.client, cluster]

    def _submit(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        # pure=False: equal items must still run (a retried write), and hashing large task
        # items to build keys would cost more than the tasks.
        futures: list[Any] = self.client.map(fn, list(items), pure=False)
        return futures

    def _watch(
        self,
        fn: Callable[[Any], Any],
        items: Sequence[Any],
        futures: list[Any],
        progress: ProgressFn | None,
        also: list[Any],
    ) -> None:
        """Wait for the leaf futures; raise on the first failure, cancelling the rest."""
        index = {fut.key: i for i, fut in enumerate(futures)}
        try:
            for fut in as_completed(futures):
                if fut.status != "finished":  # "error", or "cancelled" by someone else
                    exc = fut.exception() if fut.status == "error" else RuntimeError(fut.status)
                    raise task_error(exc, fn, items[index[fut.key]], self.name)
                if progress:
                    progress(1)
        except BaseException:
            self.client.cancel(futures + also)
            self._drain(futures + also)
            raise

    def _drain(self, futures: list[Any]) -> None:
        """Wait until no worker runs, or may still start, one of `futures` (best effort)."""
        keys = {str(f.key) for f in futures}
        deadline = time.monotonic() + DRAIN_SECONDS
        quiet_since = None
        while time.monotonic() < deadline:
            try:
                running = self.client.run(_live_keys, on_error="ignore")
            except Exception:  # noqa: BLE001 - the cluster may be gone: nothing to wait for
                return
            if keys.intersection(k for ks in running.values() for k in ks or ()):
                quiet_since = None
            elif quiet_since is None:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= QUIET_SECONDS:
                # Quiet for a while, not just once: a task the scheduler handed to a worker
                # just before the cancel (a dead worker's task moved to a live one, say) can
                # reach that worker after this query, on its other stream, and then run.
                return
            time.sleep(0.02)
        log.warning("tasks of a failed computation were still running after %s s", DRAIN_SECONDS)

    def map(
        self, fn: Callable[[Any], Any], items: Sequence[Any], progress: ProgressFn | None = None
    ) -> list[Any]:
        if not items:
            return []
        futures = self._submit(fn, items)
        self._watch(fn, items, futures, progress, [])
        results: list[Any] = self.client.gather(futures)
        return results

    def map_reduce(
        self,
        fn: Callable[[Any], Any],
        items: Sequence[Any],
        key: Callable[[Any], K],
        combine: Callable[[Any, Any], Any] = operator.add,
        progress: ProgressFn | None = None,
    ) -> dict[K, Any]:
        if not items:
            return {}
        futures = self._submit(fn, items)
        combines: list[Any] = []

        def submit_combine(a: Any, b: Any) -> Any:
            combines.append(self.client.submit(combine, a, b, pure=False))
            return combines[-1]

        # The tree is submitted up front: combines start as soon as their two inputs exist,
        # and partial sums never travel through this process.
        roots = {
            k: tree_reduce([futures[i] for i in idx], submit_combine)
            for k, idx in group_indices(items, key).items()
        }
        self._watch(fn, items, futures, progress, combines)
        try:
            values = self.client.gather(list(roots.values()))
        except Exception as exc:  # a combine failed: the leaves all succeeded
            self.client.cancel(combines)
            self._drain(combines)
            raise task_error(exc, combine, "a partial sum", self.name)  # noqa: B904 - chained inside
        return dict(zip(roots, values, strict=True))

    def close(self) -> None:
        for obj in self._owned:
            obj.close()
        self._owned = []
