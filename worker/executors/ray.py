"""Ray executor: ray.init() locally, or connected to a running cluster by address."""

from __future__ import annotations

import operator
from collections.abc import Callable, Hashable, Sequence
from typing import Any

from worker.executors.base import Executor, ProgressFn, group_indices


def _call(fn, item):
    return fn(item)


class RayExecutor(Executor):
    name = "ray"

    def __init__(self, address: str | None = None, *, workers: int | None = None) -> None:
        import ray

        self._ray = ray
        self._started = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {
                "include_dashboard": False,
                "log_to_driver": False,
                "ignore_reinit_error": True,
            }
            if address:
                kwargs["address"] = address
            else:
                kwargs["num_cpus"] = workers or 2
            ray.init(**kwargs)
            self._started = True
        self._call = ray.remote(num_cpus=1, max_retries=3)(_call)
        self._combine = ray.remote(num_cpus=0)(lambda combine, a, b: combine(a, b))

    def _submit(self, fn, items):
        fn_ref = self._ray.put(fn)
        return [self._call.remote(fn_ref, item) for item in items]

    def _wait(self, refs, progress):
        pending = list(refs)
        while pending:
            done, pending = self._ray.wait(pending, num_returns=1)
            if progress:
                progress(len(done))

    def map(
        self, fn: Callable[[Any], Any], items: Sequence[Any], progress: ProgressFn | None = None
    ) -> list[Any]:
        refs = self._submit(fn, items)
        self._wait(refs, progress)
        return self._ray.get(refs)

    def map_reduce(
        self,
        fn: Callable[[Any], Any],
        items: Sequence[Any],
        key: Callable[[Any], Hashable],
        combine: Callable[[Any, Any], Any] = operator.add,
        progress: ProgressFn | None = None,
    ) -> dict[Hashable, Any]:
        refs = self._submit(fn, items)
        self._wait(refs, progress)
        out = {}
        for k, idx in group_indices(items, key).items():
            level = [refs[i] for i in idx]
            while len(level) > 1:
                nxt = [
                    self._combine.remote(combine, level[i], level[i + 1])
                    for i in range(0, len(level) - 1, 2)
                ]
                if len(level) % 2:
                    nxt.append(level[-1])
                level = nxt
            out[k] = level[0]
        return dict(zip(out, self._ray.get(list(out.values())), strict=True))

    def close(self) -> None:
        if self._started:
            self._ray.shutdown()
            self._started = False
