"""Ray executor: ray.init() locally, or connected to a running cluster by address.

Ray starts its worker processes itself, from its own working directory, so they do not see the
caller's sys.path: a task pickled as "worker.svd.tasks.gram_block" would fail to import there
unless tinysub is installed. The job's runtime_env therefore puts the directory that holds the
tinysub packages this process imported on the workers' PYTHONPATH (a source checkout, or the
site-packages of an install; an editable install works either way), and passes TINYSUB_DEVICE
on. For a remote cluster without tinysub installed, pass runtime_env={"py_modules": [...]}.

GPUs: tasks ask for a share of a GPU only when the cluster has GPUs (a request that no node
can satisfy would wait forever) and the device is not forced to the CPU. Ray then sets
CUDA_VISIBLE_DEVICES for each task, and the kernels pick CUDA when they see a GPU.
"""

from __future__ import annotations

import contextlib
import operator
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import worker
from storage.errors import InvalidInput
from worker.executors.base import (
    DEVICE_ENV,
    DRAIN_SECONDS,
    Executor,
    K,
    ProgressFn,
    group_indices,
    task_error,
    tree_reduce,
)
from worker.executors.memory import ENV as MEMORY_ENV

# How long one ray.wait blocks before progress is reported; results arriving sooner end it.
_POLL_S = 0.2


def _call(fn: Callable[[Any], Any], item: Any) -> Any:
    return fn(item)


def _combine(combine: Callable[[Any, Any], Any], a: Any, b: Any) -> Any:
    return combine(a, b)


def package_root() -> str:
    """The directory holding the tinysub packages (storage/, worker/, ...) imported here."""
    return str(Path(worker.__file__).resolve().parent.parent)


def worker_runtime_env(runtime_env: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The job's runtime_env: the caller's, plus PYTHONPATH, TINYSUB_DEVICE and the allocator
    setting of worker.executors.memory for the workers.

    Values the caller set win. PYTHONPATH keeps the cluster's own entries after ours.
    """
    env = dict(runtime_env or {})
    env_vars = dict(env.get("env_vars") or {})
    path = package_root()
    if os.environ.get("PYTHONPATH"):
        path += os.pathsep + "${PYTHONPATH}"  # Ray expands it to the node's value
    env_vars.setdefault("PYTHONPATH", path)
    if os.environ.get(DEVICE_ENV):
        env_vars.setdefault(DEVICE_ENV, os.environ[DEVICE_ENV])
    for name, value in MEMORY_ENV.items():
        env_vars.setdefault(name, value)
    env["env_vars"] = env_vars
    return env


def gpu_share(
    resources: Mapping[str, float], requested: float | None = None, device: str | None = None
) -> float:
    """The GPU share each task asks for on a cluster with `resources` (ray.cluster_resources()).

    requested: an explicit share (0 for none). Otherwise none when the cluster has no GPU or the
    device is forced to the CPU (device or TINYSUB_DEVICE is 'cpu'/'numpy'); else GPUs / CPUs
    (at most 1), so that every CPU slot can run a task and the GPUs are shared evenly.
    """
    gpus = float(resources.get("GPU", 0))
    if requested is not None:
        if requested < 0 or requested > max(gpus, 1):
            raise InvalidInput(f"gpus_per_task must be between 0 and 1, got {requested}")
        if requested > 0 and gpus == 0:
            raise InvalidInput(
                f"gpus_per_task={requested} was asked for but the Ray cluster has no GPU; "
                "tasks would wait forever"
            )
        return float(requested)
    want = (device or os.environ.get(DEVICE_ENV) or "auto").lower()
    if gpus == 0 or want in ("cpu", "numpy"):
        return 0.0
    cpus = max(float(resources.get("CPU", 1)), 1.0)
    # Ray accepts fractions down to 1e-4; round down so the shares never exceed the GPUs.
    return max(1e-4, min(1.0, int(gpus / cpus * 1e4) / 1e4))


class RayExecutor(Executor):
    """Run tasks as Ray tasks.

    address: a cluster to connect to ("auto", "ray://host:10001", "host:6379"). Without one, a
    local Ray is started with `workers` CPUs (default: all). If this process is already
    connected to Ray, that connection is used and left open on close.
    runtime_env: extra runtime_env for the job (see `worker_runtime_env`).
    gpus_per_task / device: see `gpu_share`.
    """

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        *,
        workers: int | None = None,
        runtime_env: Mapping[str, Any] | None = None,
        gpus_per_task: float | None = None,
        device: str | None = None,
    ) -> None:
        import ray  # noqa: PLC0415 - optional (ray extra); helpers work without it

        self._ray = ray
        self._started = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {
                "include_dashboard": False,
                "log_to_driver": False,
                "runtime_env": worker_runtime_env(runtime_env),
            }
            if address:
                kwargs["address"] = address
            elif workers:
                kwargs["num_cpus"] = workers
            ray.init(**kwargs)
            self._started = True
        try:
            self.gpus_per_task = gpu_share(ray.cluster_resources(), gpus_per_task, device)
        except BaseException:
            self.close()
            raise
        opts: dict[str, Any] = {"num_cpus": 1, "max_retries": 3}
        if self.gpus_per_task:
            opts["num_gpus"] = self.gpus_per_task
        # max_retries re-runs a task whose worker died; a task that raised is not retried.
        self._call = ray.remote(**opts)(_call)
        # Combines take a CPU slot like any task: a zero-CPU task would make Ray start extra
        # worker processes (seconds each) while the slots are busy with blocks.
        self._combine = ray.remote(num_cpus=1, max_retries=3)(_combine)

    def _submit(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        fn_ref = self._ray.put(fn)
        return [self._call.remote(fn_ref, item) for item in items]

    def _cancel(self, refs: list[Any]) -> None:
        # Only what has not finished: Ray 2.60 aborts the whole driver process when a cancel
        # races with the completion reply of the same task (task_manager.cc "Tried to complete
        # task that was not pending", measured in this suite; ray-project/ray PR 54798 fixed the
        # retry half of that race). Skipping finished tasks narrows the window to tasks that
        # finish during the cancel itself.
        with contextlib.suppress(Exception):
            ready, _ = self._ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)
            done = set(ready)
            refs = [ref for ref in refs if ref not in done]
        for ref in refs:
            # A task that already finished or is gone has nothing left to stop.
            with contextlib.suppress(Exception):
                self._ray.cancel(ref)
        # A cancelled ref is ready once its task has stopped: wait for that (best effort).
        with contextlib.suppress(Exception):
            self._ray.wait(refs, num_returns=len(refs), timeout=DRAIN_SECONDS, fetch_local=False)

    def _cause(self, exc: BaseException) -> BaseException:
        """The task's own exception inside Ray's wrapper, when Ray could rebuild it."""
        cause: BaseException | None = getattr(exc, "cause", None)
        if isinstance(exc, self._ray.exceptions.RayTaskError) and cause is not None:
            return cause
        return exc

    def _failed_leaf(
        self,
        fn: Callable[[Any], Any],
        items: Sequence[Any],
        leaves: list[Any],
        exc: BaseException,
    ) -> BaseException:
        """The error of the first failed leaf (only looked for once something failed)."""
        ready, _ = self._ray.wait(leaves, num_returns=len(leaves), timeout=0, fetch_local=False)
        for ref in ready:
            try:
                self._ray.get(ref)
            except self._ray.exceptions.RayError as leaf_exc:
                return task_error(self._cause(leaf_exc), fn, items[leaves.index(ref)], self.name)
        return task_error(self._cause(exc), fn, "a partial sum", self.name)

    def _run(
        self,
        fn: Callable[[Any], Any],
        items: Sequence[Any],
        progress: ProgressFn | None,
        reduce: tuple[Callable[[Any], K], Callable[[Any, Any], Any]] | None = None,
    ) -> tuple[list[Any], dict[K, Any]]:
        """Wait for the leaf tasks (and the roots of a reduction), reporting each finished
        leaf; raise on the first failure, cancelling everything still pending.

        Returns the leaves and, with reduce=(key, combine), the root of each key's tree. map
        fetches each leaf as it finishes, which is also how a failure shows. map_reduce leaves
        stay on the cluster: a failed leaf fails the combines that depend on it at once, so
        watching the roots is enough to notice it early.
        """
        leaves = self._submit(fn, items)
        combines: list[Any] = []
        roots: dict[K, Any] = {}
        if reduce is not None:
            key, combine = reduce

            def submit_combine(a: Any, b: Any) -> Any:
                combines.append(self._combine.remote(combine, a, b))
                return combines[-1]

            # The whole tree is submitted up front; Ray runs each combine once its inputs exist.
            roots = {
                k: tree_reduce([leaves[i] for i in idx], submit_combine)
                for k, idx in group_indices(items, key).items()
            }
        watched = set(roots.values())
        is_leaf = {ref: i for i, ref in enumerate(leaves)}
        pending = list(dict.fromkeys(leaves + list(watched)))
        try:
            while pending:
                done, pending = self._ray.wait(
                    pending, num_returns=len(pending), timeout=_POLL_S, fetch_local=not reduce
                )
                for ref in done:
                    if not reduce or ref in watched:
                        try:
                            self._ray.get(ref)
                        except self._ray.exceptions.RayError as exc:
                            if not reduce:
                                raise task_error(  # noqa: B904 - chained by task_error
                                    self._cause(exc), fn, items[is_leaf[ref]], self.name
                                )
                            raise self._failed_leaf(fn, items, leaves, exc)  # noqa: B904
                    if progress and ref in is_leaf:
                        progress(1)
        except BaseException:
            self._cancel(leaves + combines)
            raise
        return leaves, roots

    def map(
        self, fn: Callable[[Any], Any], items: Sequence[Any], progress: ProgressFn | None = None
    ) -> list[Any]:
        if not items:
            return []
        leaves, _ = self._run(fn, items, progress)
        return self._ray.get(leaves)

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
        _, roots = self._run(fn, items, progress, (key, combine))
        return dict(zip(roots, self._ray.get(list(roots.values())), strict=True))

    def close(self) -> None:
        if self._started:
            self._ray.shutdown()
            self._started = False
