"""docker-compose.yml's topology without Docker: every service a real process on loopback.

moto's S3 server stands in for MinIO, PostgreSQL runs from the Debian packages (SQLite when this
machine cannot run it; the PostgreSQL tests then fail, or skip where TINYSUB_ALLOW_SKIPS=postgres
allows it: tests/promised.py), a Dask
scheduler with two workers is started with the `dask` command line, a Ray head with
`ray start --head` (token authentication on, reached through Ray Client), and `tinysub serve`
is pointed at them through TINYSUB_* variables.

Trajectories are ingested into s3:// by `tinysub ingest` in its own process and registered from
a trusted prefix; a third task is uploaded over HTTP into the registry's s3:// store root. Task,
unified and zero-shot bases are computed on each executor, pulled with the client, and must equal,
byte for byte, the same bases computed here with the local executor (from the local-disk copy
too, for the task basis). Every process is stopped in a `finally`, also when a check fails.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from client import Client
from services.local import REPO, LocalServer
from storage.basis import BasisStore
from storage.ingest import ingest_arrays
from storage.objects import Location
from storage.trajectory import TrajectoryStore
from tests.topology import DaskCluster, RayHead, child_env
from worker.executors import LocalExecutor
from worker.svd.bases import task_basis

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

BLOCK_COLS = 2048
CHUNK_COLS = 1024
SIZES = {"layer.0": 6000, "layer.1": 2500}  # 3 and 2 column blocks
ROWS = {"a": 9, "b": 7, "c": 5}
INCOMING = "s3://tinysub/incoming"


def _random_walk(rows: int, seed: int) -> dict[str, np.ndarray]:
    """theta0 ~ N(0, 1) then `rows - 1` steps of N(0, 0.01^2): (rows, D) per group."""
    rng = np.random.default_rng(seed)
    out = {}
    for g, d in SIZES.items():
        steps = rng.standard_normal((rows, d)) * 0.01
        steps[0] = rng.standard_normal(d)
        out[g] = np.cumsum(steps, axis=0).astype("f4")
    return out


@pytest.fixture(scope="module")
def clusters(local_s3, tmp_path_factory):
    """A Dask scheduler + 2 workers and a Ray head, with S3 credentials in their environment
    (the workers open trusted-prefix URLs without storage options, as containers do)."""
    work = tmp_path_factory.mktemp("clusters")
    dask = DaskCluster(work / "dask", n_workers=2, env=local_s3.env)
    ray = RayHead(work / "ray", num_cpus=2, env=local_s3.env)
    try:
        dask.start()
        ray.start()
        yield {"dask": dask, "ray": ray}
    finally:
        ray.stop()
        dask.stop()


@pytest.fixture(scope="module")
def inputs(local_s3, tmp_path_factory):
    """Tasks a and b ingested into s3:// by the CLI (in a subprocess), a local-disk copy of a,
    and a local store of task c to upload."""
    work = tmp_path_factory.mktemp("inputs")
    opts = local_s3.storage_options
    cli_opts = [f"--storage-option={k}={json.dumps(v)}" for k, v in opts.items()]
    urls = {}
    for i, task in enumerate(ROWS):
        arrays = _random_walk(ROWS[task], seed=i + 1)
        np.savez(work / f"{task}.npz", **arrays)
        if task == "c":
            continue
        urls[task] = f"{INCOMING}/{task}"
        done = subprocess.run(
            [sys.executable, "-m", "tinysub.cli.main", "ingest", str(work / f"{task}.npz"),
             urls[task], "--chunk-cols", str(CHUNK_COLS), "--model", "arrays", "--quiet",
             *cli_opts],
            cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
    for task in ("a", "c"):
        ingest_arrays(work / task, work / f"{task}.npz", options=_local_options())
    layout = TrajectoryStore.open(urls["a"], storage_options=opts).layout
    return {"urls": urls, "local": {t: str(work / t) for t in ("a", "c")}, "layout": layout}


def _local_options():
    from storage.ingest import StoreOptions

    return StoreOptions(model_name="arrays", chunk_cols=CHUNK_COLS)


def _raw(store: BasisStore) -> dict[str, bytes]:
    return {n: store.load(n).astype("<f4").tobytes() for n in store.layer_names}


@pytest.mark.parametrize("executor", ["dask", "ray"])
def test_topology_end_to_end(executor, clusters, inputs, local_s3, local_postgres, tmp_path):
    cluster = clusters[executor]
    if local_postgres is not None:
        database_url = local_postgres.create_database(f"registry_{executor}")
    else:  # the PostgreSQL tests report why (tests/promised.py)
        database_url = f"sqlite:///{tmp_path / 'registry.db'}"
    root = f"s3://tinysub/registry-{executor}"
    env = {
        **local_s3.env,
        **getattr(cluster, "env", {}),  # the Ray token for the driver
        "TINYSUB_DATABASE_URL": database_url,
        "TINYSUB_STORE_ROOT": root,
        "TINYSUB_STORAGE_OPTIONS": json.dumps(local_s3.storage_options),
        "TINYSUB_TRUSTED_STORE_PREFIXES": json.dumps([INCOMING]),
        "TINYSUB_EXECUTOR": executor,
        # Ray through Ray Client (ray://), as the registry container reaches ray-head.
        "TINYSUB_EXECUTOR_ADDRESS": getattr(cluster, "client_address", cluster.address),
        "TINYSUB_BLOCK_COLS": str(BLOCK_COLS),
        "TINYSUB_JOB_POLL_SECONDS": "0.1",
    }
    server = LocalServer(tmp_path / "registry", env)
    token = server.admin_token()
    try:
        server.start(timeout=90)
        c = Client(server.url, token=token, cache_dir=tmp_path / "cache")
        assert c.health()["executor"] == executor
        _check_bases(c, inputs, local_s3, root, tmp_path)
        if local_postgres is not None:
            _check_database(database_url)
    finally:
        server.stop()


def _check_bases(c: Client, inputs, local_s3, root: str, tmp_path) -> None:
    layout, urls, opts = inputs["layout"], inputs["urls"], local_s3.storage_options
    for task in ROWS:
        c.create_task(task, model="arrays", layout=layout)
    for task, url in urls.items():
        c.register_trajectory(task, url)
    c_url = c.upload_trajectory("c", inputs["local"]["c"], part_bytes=8192)["url"]
    assert c_url.startswith(root + "/")  # written by the registry into its s3:// root

    jobs = {
        ("a", "task"): c.compute_basis("a", "task", rank=4),
        ("c", "task"): c.compute_basis("c", "task", rank=3),
        ("a", "unified"): c.compute_basis(
            "a", "unified", rank=3, tasks=["a", "b"], selection="last:3"
        ),
        ("a", "zeroshot"): c.compute_basis(
            "a", "zeroshot", rank=2, tasks=["a", "b"], selection="last:3"
        ),
    }
    for key, job in jobs.items():
        done = job.wait(timeout=150)
        assert done.status == "succeeded", (key, done.data)

    from worker.svd.bases import multitask_bases

    kw = dict(executor=LocalExecutor(2), block_cols=BLOCK_COLS, storage_options=opts)
    out = tmp_path / "reference"
    refs = {
        ("a", "task"): task_basis(urls["a"], str(out / "a"), 4, **kw).bases[0],
        ("c", "task"): task_basis(c_url, str(out / "c"), 3, **kw).bases[0],
        ("a", "unified"): multitask_bases(
            urls, str(out / "multi"), 3, selection="last:3", zeroshot=False, **kw
        ).bases[0],
        # zero-shot for a over {a, b}: b's rows alone; a's are never read.
        ("a", "zeroshot"): task_basis(
            urls["b"], str(out / "zs"), 2, selection="last:3", **kw
        ).bases[0],
    }
    # The local computation from the local-disk copy gives the same bytes as from s3://.
    kw.pop("storage_options")
    from_disk = task_basis(inputs["local"]["a"], str(out / "a-disk"), 4, **kw).bases[0]
    assert _raw(from_disk) == _raw(refs[("a", "task")])

    for (task, kind), ref in refs.items():
        pulled = c.pull_basis(task, kind)
        got = {n: p.read_bytes() for n, p in pulled.files.items()}
        assert got == _raw(ref), (task, kind)
        assert [i["sha256"] for i in pulled.manifest["layers"]] == [
            ref.layer(n).sha256 for n in ref.layer_names
        ]
        v = c.load_basis(task, kind)["layer.0"].numpy().astype(np.float64)
        assert np.abs(v.T @ v - np.eye(v.shape[1])).max() < 1e-5  # orthonormal columns
    # The bases really live in the object store, committed (manifest written last).
    stored = BasisStore.open(f"{root}/bases/a/task/v1", opts)
    assert stored.verify() == []
    assert "tinysub-basis.json" in Location.from_url(f"{root}/bases/a/task/v1", opts).list()


def _check_database(url: str) -> None:
    from sqlalchemy import select

    from services.db import Database
    from services.models import Basis, Job

    db = Database(url)
    try:
        assert db.engine.dialect.name == "postgresql"
        with db.session() as s:
            assert set(s.scalars(select(Job.status))) == {"succeeded"}
            layers = s.scalars(select(Basis.layers).where(Basis.status == "ready")).all()
        assert len(layers) == 4 and all(len(ls) == len(SIZES) for ls in layers)
    finally:
        db.dispose()
