"""The remote fine-tuning worker: pull a basis by task ID from a real registry process, train
in it, and post the run back to /v1/runs, tracked per basis version."""

import numpy as np
import pytest

from client import Client
from client.refs import BasisRef, RegistryConfig
from services.local import LocalServer
from storage.trajectory import TrajectoryStore
from tests.worker.finetune.test_runner import toy_csv  # noqa: F401 - a fixture
from worker.finetune.runner import RunSpec, read_run, run
from worker.finetune.sources import RegistryBasisSource
from worker.finetune.train import TrainConfig

TRAIN = TrainConfig(max_steps=6, batch_size=8, lr=1e-3, seed=1)


@pytest.fixture(scope="module")
def registry(tmp_path_factory, toy_csv):  # noqa: F811
    tmp = tmp_path_factory.mktemp("remote")
    traj = tmp / "traj"
    run(
        RunSpec(
            task=toy_csv,
            method="full",
            model="tiny-bert",
            train=TRAIN,
            record_trajectory=str(traj),
            record_every=2,
        )
    )
    store = TrajectoryStore.open(traj)
    with LocalServer(tmp / "registry") as server:
        token = server.admin_token()
        client = Client(server.url, token=token, cache_dir=tmp / "cache")
        client.create_task("toy", model=store.model_name, layout=store.layout)
        client.upload_trajectory("toy", str(traj))
        client.compute_basis("toy", "task", rank=2, mode="delta").wait(timeout=120)
        yield server, token, client
        client.close()


def test_intrinsic_run_pulls_by_task_id_and_posts_its_metrics(registry, toy_csv, tmp_path):  # noqa: F811
    server, token, client = registry
    record = run(
        RunSpec(
            task=toy_csv,
            method="intrinsic",
            model="tiny-bert",
            train=TRAIN,
            registry=RegistryConfig(server.url, token=token),
            basis_ref=BasisRef("toy", "task"),
            out=str(tmp_path / "intr"),
        )
    )
    manifest = client.basis("toy", "task")
    shas = {i["name"]: i["sha256"] for i in manifest["layers"]}
    ref = record["basis"]
    assert ref["task"] == "toy" and ref["kind"] == "task" and ref["version"] == 1
    assert {n: v["sha256"] for n, v in ref["layers"].items()} == shas
    # The resolved BasisRef: the version pulled and every layer's sha256, in run.json too.
    pinned = BasisRef("toy", "task", version=1, layer_sha256=shas)
    assert BasisRef.from_dict(record["basis_ref"]) == pinned
    assert BasisRef.from_dict(read_run(str(tmp_path / "intr"))["basis_ref"]) == pinned
    assert client.resolve_basis(pinned) == pinned  # it pulls back exactly these bytes
    assert record["rank"] == 2
    posted = record["registry_run"]
    assert posted["posted"] is True
    runs = client.runs(task_id="toy")
    mine = [r for r in runs if r["id"] == posted["id"]]
    assert mine and mine[0]["basis_version"] == 1 and mine[0]["method"] == "intrinsic"
    assert mine[0]["metrics"]["accuracy"] == pytest.approx(record["metrics"]["accuracy"])


def test_registry_source_is_the_cached_verified_basis(registry, tmp_path):
    server, token, client = registry
    source = RegistryBasisSource(
        server.url, "toy", "task", token=token, cache_dir=str(tmp_path / "c2")
    )
    for layer in source.layer_names():
        v = source.load(layer).astype(np.float64)
        np.testing.assert_allclose(v.T @ v, np.eye(v.shape[1]), atol=1e-5)
    with pytest.raises(KeyError):
        RegistryBasisSource(
            server.url, "toy", "global", token=token, cache_dir=str(tmp_path / "c3")
        )


def test_a_refused_post_does_not_lose_the_run(registry, toy_csv, tmp_path):  # noqa: F811
    server, _, client = registry
    read_only = client.create_token("reader", ["read"])["token"]
    # The old flat keywords still build the same spec (with a DeprecationWarning).
    with pytest.warns(DeprecationWarning, match="basis_ref"):
        spec = RunSpec(
            task=toy_csv,
            method="intrinsic",
            model="tiny-bert",
            train=TRAIN,
            registry=server.url,
            token=read_only,
            basis_task="toy",
            out=str(tmp_path / "ro"),
        )
    assert spec.basis_ref == BasisRef("toy", "task")
    assert spec.registry == RegistryConfig(server.url, token=read_only)
    record = run(spec)
    assert record["basis_ref"]["version"] == 1
    assert record["registry_run"]["posted"] is False
    assert "scope" in record["registry_run"]["error"] or "403" in record["registry_run"]["error"]
    assert (tmp_path / "ro" / "run.json").exists()
