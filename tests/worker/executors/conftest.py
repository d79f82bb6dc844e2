"""Real clusters for the executor tests: a Dask LocalCluster per module, one Ray per package.

Ray starts slowly (several seconds, plus worker start-up on the first task), so every Ray test
here shares one local Ray; it stops when this package's tests end, so that no Ray processes
live on through the rest of the suite. Both are shut down in a
`finally`, so a failing test never leaves worker processes behind.
"""

from __future__ import annotations

import pytest

from tests.promised import import_or_skip_missing
from worker.executors import LocalExecutor


@pytest.fixture(scope="module")
def dask_cluster():
    distributed = import_or_skip_missing("dask", "dask.distributed")
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    )
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="module")
def dask_executor(dask_cluster):
    from worker.executors.dask import DaskExecutor

    # Connecting by address is how a job reaches an existing cluster: test that path.
    ex = DaskExecutor(address=dask_cluster.scheduler_address)
    try:
        yield ex
    finally:
        ex.close()


@pytest.fixture(scope="package")
def ray_executor():
    ray = import_or_skip_missing("ray", "ray")
    from worker.executors.ray import RayExecutor

    assert not ray.is_initialized(), "Ray was started outside the ray_executor fixture"
    ex = RayExecutor(workers=2)
    try:
        yield ex
    finally:
        ex.close()


@pytest.fixture(params=["local", "dask", "ray"])
def executor(request):
    """Each executor in turn; the cluster ones are shared, the local one is per test."""
    if request.param == "local":
        ex = LocalExecutor(2)
        try:
            yield ex
        finally:
            ex.close()
    else:
        yield request.getfixturevalue(f"{request.param}_executor")
