"""The executor contract, checked on a thread pool, a real Dask cluster and a real Ray.

Task functions live at module level: Dask and Ray workers import them by name, which also
proves that the workers can import this repository's packages.
"""

from __future__ import annotations

import operator
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from storage.errors import InvalidInput, StorageError
from worker.executors import TaskFailed, make_executor
from worker.executors.base import tree_reduce

pytestmark = pytest.mark.integration


def _slow_identity(item: tuple[int, float]) -> int:
    i, delay = item
    time.sleep(delay)
    return i


def _singleton(i: int) -> list[int]:
    return [i]


def _as_array(x: float) -> np.ndarray:
    return np.array([x])


def _fail_on_three(i: int) -> int:
    if i == 3:
        raise ZeroDivisionError("three is not allowed")
    return i


def _storage_error_on_two(i: int) -> int:
    if i == 2:
        raise StorageError("chunk 2 is corrupt")
    return i


def _fail_first_mark_the_others(item: tuple[int, str]) -> int:
    i, folder = item
    if i == 0:
        time.sleep(0.05)
        raise ZeroDivisionError("the first task fails")
    time.sleep(0.5)  # still running when the first one fails
    Path(folder, str(i)).write_text("written")
    return i


def _where(_: int) -> tuple[str, str]:
    import worker

    return worker.__file__, sys.executable


def test_map_preserves_order_when_tasks_finish_out_of_order(executor):
    # The first items take longest, so they finish last.
    items = [(i, 0.02 * (8 - i)) for i in range(8)]
    assert executor.map(_slow_identity, items) == list(range(8))


def test_map_of_nothing_is_empty(executor):
    assert executor.map(_singleton, []) == []
    assert executor.map_reduce(_singleton, [], key=lambda i: 0) == {}


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7, 12])
def test_map_reduce_combines_every_item_once_in_order(executor, n):
    # List concatenation is associative but not commutative: the result shows both that each
    # item is combined exactly once (odd counts carry one up a level) and in item order.
    items = list(range(n))
    calls = []
    out = executor.map_reduce(
        _singleton, items, key=lambda i: i % 3, combine=operator.add, progress=calls.append
    )
    assert out == {k: [i for i in items if i % 3 == k] for k in sorted({i % 3 for i in items})}
    assert calls == [1] * n


def test_map_reduce_sums_floats_in_the_same_tree_everywhere(executor):
    # Floating-point addition is not associative: sequentially these add up to 4, in the
    # pairwise tree to 3. Every executor must give the tree's answer, bit for bit.
    values = [1.0, 1e16, -1e16, 1.0, 3.0]
    sequential = (((values[0] + values[1]) + values[2]) + values[3]) + values[4]
    tree = tree_reduce([_as_array(v) for v in values], operator.add)
    assert sequential == 4.0 and tree[0] == 3.0
    out = executor.map_reduce(_as_array, values, key=lambda v: "all")
    assert np.array_equal(out["all"], tree)


def test_progress_is_called_once_per_item(executor):
    calls = []
    executor.map(_singleton, list(range(9)), progress=calls.append)
    assert calls == [1] * 9


def test_failing_task_raises_task_failed_naming_it(executor):
    with pytest.raises(TaskFailed) as info:
        executor.map(_fail_on_three, list(range(6)))
    msg = str(info.value)
    assert "_fail_on_three failed on 3" in msg
    assert executor.name in msg
    assert "ZeroDivisionError: three is not allowed" in msg
    # The executor stays usable after a failure.
    assert executor.map(_singleton, [1, 2]) == [[1], [2]]


def test_failing_task_keeps_its_tinysub_error_type(executor):
    with pytest.raises(StorageError, match="chunk 2 is corrupt") as info:
        executor.map_reduce(_storage_error_on_two, list(range(5)), key=lambda i: 0)
    assert any("_storage_error_on_two failed on 2" in n for n in info.value.__notes__)


def test_workers_import_this_checkout(executor):
    import worker

    files = {f for f, _ in executor.map(_where, list(range(4)))}
    assert files == {worker.__file__}


def test_local_executor_rejects_zero_workers():
    with pytest.raises(InvalidInput, match="at least 1"):
        make_executor("local", workers=0)


def test_unknown_executor_is_invalid_input():
    with pytest.raises(InvalidInput, match="unknown executor 'spark'"):
        make_executor("spark")


def test_dask_executor_connects_by_address_and_leaves_the_cluster_running(dask_cluster):
    from dask.distributed import Client

    ex = make_executor("dask", address=dask_cluster.scheduler_address)
    assert ex.map(_singleton, [5]) == [[5]]
    ex.close()
    # The cluster is somebody else's: still up after our client closed.
    with Client(dask_cluster.scheduler_address) as other:
        assert other.submit(_singleton, 6).result() == [6]


def test_dask_executor_without_address_starts_and_stops_its_own_cluster():
    from worker.executors.dask import DaskExecutor

    ex = DaskExecutor(workers=1)
    cluster = ex._owned[-1]
    try:
        assert ex.map(_singleton, [1, 2]) == [[1], [2]]
    finally:
        ex.close()
    assert cluster.status.name == "closed"


def test_ray_tasks_ask_for_no_gpu_on_a_cluster_without_one(ray_executor):
    import ray

    if ray.cluster_resources().get("GPU", 0):
        pytest.skip("this Ray has GPUs")
    assert ray_executor.gpus_per_task == 0
    assert ray_executor.map(_singleton, [1]) == [[1]]


def test_a_failure_is_raised_only_once_running_tasks_ended(executor, tmp_path):
    """Callers clean up after a failed computation as soon as it raises: a task still running
    then must not write afterwards (it would leave half a basis behind the clean-up)."""
    items = [(i, str(tmp_path)) for i in range(2)]  # two workers: task 1 runs as task 0 fails
    with pytest.raises(TaskFailed):
        executor.map(_fail_first_mark_the_others, items)
    written = sorted(os.listdir(tmp_path))
    time.sleep(0.8)
    assert sorted(os.listdir(tmp_path)) == written
