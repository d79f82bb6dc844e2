"""The remote fine-tuning worker: pull a basis by task ID from a real registry process, train
in it, and post the run back to /v1/runs, tracked per basis version."""

import json

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


def test_a_peft_adapter_fetches_its_basis_from_the_registry_or_offline_cache(
    registry, tmp_path, monkeypatch
):
    """The adapter names its registry basis by task, kind, version and per-layer sha256:
    loading pulls V through the client's verified cache, works offline from that cache, and
    refuses a basis whose sha256 differs from the recorded one."""
    import torch  # noqa: PLC0415 - the registry tests above need no torch
    from peft import PeftConfig, PeftModel  # noqa: PLC0415

    from storage.errors import InvalidInput, NotFound  # noqa: PLC0415
    from worker.finetune.config import SubspaceConfig  # noqa: PLC0415
    from worker.finetune.methods import prepare  # noqa: PLC0415
    from worker.finetune.models import load_model  # noqa: PLC0415
    from worker.finetune.peft_export import export_peft  # noqa: PLC0415
    from worker.finetune.train import seed_everything  # noqa: PLC0415

    server, token, _ = registry

    def fresh():
        seed_everything(3)
        return load_model("tiny-bert", num_labels=2, problem="classification").model.eval()

    source = RegistryBasisSource(server.url, "toy", "task", token=token, cache_dir=str(tmp_path))
    sub = prepare("intrinsic", fresh(), SubspaceConfig(rank=2), source=source)
    with torch.no_grad():
        for p in sub.subspace_theta.values():
            p.add_(1.0)
    ids = torch.randint(
        0, sub.base.config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(0)
    )
    want = sub.eval()(input_ids=ids).logits
    folder = tmp_path / "adapter"
    export_peft(sub, folder)

    monkeypatch.setenv("TINYSUB_TOKEN", token)
    monkeypatch.setenv("TINYSUB_CACHE", str(tmp_path / "load-cache"))
    loaded = PeftModel.from_pretrained(fresh(), folder)
    torch.testing.assert_close(loaded(input_ids=ids).logits, want, rtol=0, atol=1e-5)

    # Offline, as HF_HUB_OFFLINE asks of the whole load: the verified cache serves the bytes,
    # and a basis not in the cache is an error, not a download.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = PeftModel.from_pretrained(fresh(), folder)
    torch.testing.assert_close(loaded(input_ids=ids).logits, want, rtol=0, atol=1e-5)
    offline = PeftConfig.from_pretrained(folder)
    offline.basis = {**offline.basis, "version": 99}
    with pytest.raises(NotFound, match="not in the cache"):
        PeftModel.from_pretrained(fresh(), folder, config=offline)
    monkeypatch.delenv("HF_HUB_OFFLINE")

    # The recorded sha256 of one layer differs from what the registry holds: refused.
    config = json.loads((folder / "adapter_config.json").read_text())
    layer = next(iter(config["basis"]["layers"]))
    config["basis"]["layers"][layer]["sha256"] = "0" * 64
    (folder / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(InvalidInput, match="sha256"):
        PeftModel.from_pretrained(fresh(), folder)


def test_tinysub_export_writes_a_peft_adapter_and_a_merged_model_of_a_registry_run(
    registry,
    toy_csv,  # noqa: F811 - the fixture
    tmp_path,
    monkeypatch,
):
    """`tinysub export RUN --peft A --merged M` on a run trained in a registry basis: the run
    is restored by pulling its pinned basis again, and both outputs give the run's logits."""
    import torch  # noqa: PLC0415 - the registry tests above need no torch
    from peft import PeftModel  # noqa: PLC0415
    from transformers import AutoModelForSequenceClassification  # noqa: PLC0415

    import worker.finetune.peft_adapter  # noqa: F401, PLC0415 - registers the PEFT method
    from tinysub.cli.main import run as cli  # noqa: PLC0415
    from worker.finetune.models import load_model  # noqa: PLC0415
    from worker.finetune.restore import restore  # noqa: PLC0415
    from worker.finetune.train import seed_everything  # noqa: PLC0415

    server, token, _ = registry
    out = tmp_path / "run"
    run(
        RunSpec(
            task=toy_csv,
            method="intrinsic",
            model="tiny-bert",
            train=TRAIN,
            registry=RegistryConfig(server.url, token=token),
            basis_ref=BasisRef("toy", "task"),
            out=str(out),
        )
    )
    monkeypatch.setenv("TINYSUB_TOKEN", token)
    monkeypatch.setenv("TINYSUB_CACHE", str(tmp_path / "cache"))
    code = cli(
        ["export", str(out), "--peft", str(tmp_path / "peft"), "--merged", str(tmp_path / "m")]
    )
    assert code == 0
    model, tokenizer, _ = restore(str(out))
    batch = tokenizer(["the movie was good", "awful plot"], return_tensors="pt", padding=True)
    want = model.eval()(**batch).logits
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "m").eval()
    torch.testing.assert_close(merged(**batch).logits, want, rtol=0, atol=1e-5)
    seed_everything(TRAIN.seed)  # tiny-bert's theta0 is drawn from the run's seed
    base = load_model("tiny-bert", num_labels=2, problem="classification", tokenizer=tokenizer)
    adapted = PeftModel.from_pretrained(base.model.eval(), tmp_path / "peft")
    torch.testing.assert_close(adapted(**batch).logits, want, rtol=0, atol=1e-5)
    assert cli(["export", str(out)]) != 0  # nothing asked for: one clear error
