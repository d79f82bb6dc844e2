"""The registry as it runs: `tinysub serve` (uvicorn) in a subprocess on a free loopback port,
jobs on a real Dask LocalCluster and on a real local Ray cluster started by this test.

For each executor: two small tasks (one registered by URL, one uploaded over HTTP), task,
unified, zeroshot and random bases ordered and pulled over HTTP and compared byte for byte with
the kernels called directly on the same cluster; then the server is SIGKILLed while a longer job
runs, restarted, and the job must finish with nothing lost.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from client import Client
from services.local import LocalServer
from services.random_basis import random_basis
from storage.basis import BasisStore
from storage.layout import build_layout
from storage.trajectory import TrajectoryStore
from tests.conftest import make_trajectory
from tests.services.helpers import small_layout, write_store
from tinysub.cli.main import run
from worker.svd.bases import multitask_bases, task_basis

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(240)]

BLOCK_COLS = 4096


@contextlib.contextmanager
def dask_cluster():
    from dask.distributed import LocalCluster

    from worker.executors.dask import DaskExecutor

    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    )
    executor = None
    try:
        from dask.distributed import Client as DaskClient

        executor = DaskExecutor(client=DaskClient(cluster))
        yield cluster.scheduler_address, executor
    finally:
        if executor is not None:
            executor.client.close()
        cluster.close()


@contextlib.contextmanager
def ray_cluster():
    import ray

    from worker.executors.ray import RayExecutor

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        address = ray.get_runtime_context().gcs_address
        yield address, RayExecutor()
    finally:
        ray.shutdown()


def _raw(store: BasisStore) -> dict[str, bytes]:
    return {n: store.load(n).astype("<f4").tobytes() for n in store.layer_names}


def _pulled(pulled) -> dict[str, bytes]:
    return {n: p.read_bytes() for n, p in pulled.files.items()}


@pytest.mark.parametrize("executor_name", ["dask", "ray"])
def test_registry_server_end_to_end(executor_name, tmp_path, capsys):
    layout = small_layout()
    cluster = dask_cluster if executor_name == "dask" else ray_cluster
    with cluster() as (address, ref_executor):
        data_dir = tmp_path / "registry"
        server = LocalServer(
            data_dir,
            {
                "TINYSUB_EXECUTOR": executor_name,
                "TINYSUB_EXECUTOR_ADDRESS": address,
                "TINYSUB_TRUSTED_STORE_PREFIXES": f'["{tmp_path / "stores"}"]',
                "TINYSUB_BLOCK_COLS": str(BLOCK_COLS),
                "TINYSUB_JOB_POLL_SECONDS": "0.1",
            },
        )
        try:
            assert run(["token", "create", "--name", "it", "--scope", "admin",
                        "--data-dir", str(data_dir), "--json"]) == 0  # fmt: skip
            token = __import__("json").loads(capsys.readouterr().out)["token"]
            server.start()
            c = Client(server.url, token=token, cache_dir=tmp_path / "cache")
            _small_bases(c, tmp_path, layout, ref_executor)
            _kill_mid_job(c, server, tmp_path, ref_executor)
        finally:
            server.stop()
            if executor_name == "ray":
                # The server's Ray driver is gone; make sure its job is too before teardown.
                time.sleep(0.5)


def _small_bases(c: Client, tmp_path: Path, layout, executor) -> None:
    a = write_store(tmp_path, "a", layout, rows=8, seed=1)
    c.create_task("a", model="tiny", layout=layout)
    c.register_trajectory("a", a.url)
    local_b = write_store(tmp_path / "local", "b", layout, rows=6, seed=2)
    c.create_task("b", model="tiny", layout=layout)
    b_url = c.upload_trajectory("b", local_b.url, part_bytes=2048)["url"]
    assert [r.sha256 for r in TrajectoryStore.open(b_url).rows] == [r.sha256 for r in local_b.rows]

    jobs = {
        "task": c.compute_basis("a", "task", rank=4),
        "unified": c.compute_basis("a", "unified", rank=3, tasks=["a", "b"], selection="last:2"),
        "zeroshot": c.compute_basis("a", "zeroshot", rank=2, tasks=["a", "b"], selection="last:2"),
        "random": c.compute_basis("a", "random", rank=4, seed=5),
    }
    for job in jobs.values():
        assert job.wait(timeout=120).status == "succeeded"

    kw = dict(executor=executor, block_cols=BLOCK_COLS)
    refs = {
        "task": task_basis(a.url, str(tmp_path / "ref/task"), 4, **kw).bases[0],
        "unified": multitask_bases(
            {"a": a.url, "b": b_url},
            str(tmp_path / "ref/multi"),
            3,
            selection="last:2",
            zeroshot=False,
            **kw,
        ).bases[0],  # fmt: skip
        # zero-shot for a: b's rows alone, a's never read.
        "zeroshot": task_basis(b_url, str(tmp_path / "ref/zs"), 2, selection="last:2", **kw).bases[
            0
        ],
        "random": random_basis(
            str(tmp_path / "ref/random"), {g.name: g.size for g in layout.groups}, 4, 5
        ),
    }
    for kind, ref in refs.items():
        pulled = c.pull_basis("a", kind)
        assert _pulled(pulled) == _raw(ref), kind
        assert [i["sha256"] for i in pulled.manifest["layers"]] == [
            ref.layer(n).sha256 for n in ref.layer_names
        ]
    t = c.load_basis("a", "task")["layer.0"]
    assert t.shape == (layout.group("layer.0").size, 4)
    # Range over real HTTP, and a warm pull sends no layer request.
    info = c.basis("a", "task")["layers"][0]
    r = httpx.get(
        c.base_url + info["url"],
        headers={"Authorization": f"Bearer {c.token}", "Range": "bytes=8-15"},
    )
    assert r.status_code == 206 and r.content == _raw(refs["task"])["layer.0"][8:16]


def _kill_mid_job(c: Client, server: LocalServer, tmp_path: Path, executor) -> None:
    big = build_layout([("encoder.layer.0.w", (512, 1024)), ("encoder.layer.1.w", (64, 1024))])
    store = TrajectoryStore.create(
        tmp_path / "stores" / "big", big, model_name="big", chunk_cols=BLOCK_COLS
    )
    for row in make_trajectory(big, 10, seed=7):
        store.append(row)
    c.create_task("big", model="big", layout=big)
    c.register_trajectory("big", store.url)
    before = {k: c.basis("a", k) for k in ("task", "unified", "zeroshot", "random")}

    job = c.compute_basis("big", "task", rank=5)
    deadline = time.monotonic() + 60
    while not job.refresh().progress.get("phases"):  # blocks are being computed
        assert job.status in ("pending", "running"), job.data
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.02)
    server.kill()

    with pytest.raises(httpx.TransportError):
        c.health()
    server.start()
    done = c.job(job.id).wait(timeout=120)
    assert done.status == "succeeded" and done.attempts == 2, done.data
    ref = task_basis(
        store.url, str(tmp_path / "ref/big"), 5, executor=executor, block_cols=BLOCK_COLS
    ).bases[0]
    pulled = c.pull_basis("big", "task")
    assert _pulled(pulled) == _raw(ref)
    assert (
        BasisStore.open(server.data_dir / "store" / "bases" / "big" / "task" / "v1").verify() == []
    )
    # Nothing lost: every earlier basis is still served unchanged, no job is left behind.
    for kind, manifest in before.items():
        assert c.basis("a", kind) == manifest
    assert {j.status for j in c.jobs(limit=100)} == {"succeeded"}
    q = np.frombuffer(pulled.files["layer.1"].read_bytes(), "<f4").reshape(-1, 5)
    assert np.abs(q.T.astype(np.float64) @ q - np.eye(5)).max() < 1e-5
