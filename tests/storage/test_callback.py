"""TrajectoryCallback inside a real (tiny) HF Trainer run on synthetic data."""

from __future__ import annotations

import numpy as np
import pytest

from storage.errors import Conflict, InvalidInput
from storage.trajectory import TrajectoryStore
from tests.storage.checkpoint_runs import TINY, layer_rows

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from storage.ingest import TrajectoryCallback, ingest_checkpoints  # noqa: E402


class Synthetic(torch.utils.data.Dataset):
    """Label = whether token 7 occurs: learnable, so the loss and the weights move."""

    def __init__(self, n: int = 32, length: int = 8, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, 100, (n, length), generator=g)
        self.labels = (self.ids == 7).any(dim=1).long()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def model(seed: int = 0):
    torch.manual_seed(seed)
    return transformers.BertForSequenceClassification(transformers.BertConfig(**TINY))


def trainer(m, out, callback, **kw):
    args = dict(
        output_dir=str(out),
        per_device_train_batch_size=8,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
    )
    args.update(kw)
    return transformers.Trainer(
        model=m,
        args=transformers.TrainingArguments(**args),
        train_dataset=Synthetic(),
        eval_dataset=Synthetic(n=8, seed=1),
        callbacks=[callback],
    )


def test_rows_every_n_steps_straight_from_the_model(tmp_path):
    m = model()
    theta0 = layer_rows(m)
    url = tmp_path / "traj"
    t = trainer(m, tmp_path / "out", TrajectoryCallback(url, every=2), max_steps=5)
    t.train()
    store = TrajectoryStore.open(url)
    assert [r.step for r in store.rows] == [0, 2, 4, 5]  # the last step always gets a row
    for g, v in theta0.items():
        np.testing.assert_array_equal(store.read_row(0, g), v)
        np.testing.assert_array_equal(store.read_row(3, g), layer_rows(m)[g])
    # Training moved every layer between rows.
    w = store.read_block("layer.0")
    assert np.all(np.linalg.norm(np.diff(w, axis=0), axis=1) > 0)
    # No checkpoint files were written anywhere.
    assert not list((tmp_path / "out").glob("checkpoint-*"))
    assert not list(tmp_path.rglob("*.safetensors"))
    # What the trainer logged at a row's step (after the row was written) is in its metrics.
    logged = {e["step"]: e for e in t.state.log_history if "loss" in e}
    for row in store.rows[1:]:
        assert set(row.metrics) >= {"loss", "learning_rate", "grad_norm"}
        assert row.metrics["loss"] == pytest.approx(logged[row.step]["loss"])
    assert store.rows[0].metrics == {}
    assert store.layout.group_names == ["layer.0", "layer.1"]
    assert store.verify() == []


def test_rows_every_epoch_carry_the_eval_metrics(tmp_path):
    m = model()
    url = tmp_path / "traj"
    t = trainer(
        m, tmp_path / "out", TrajectoryCallback(url), num_train_epochs=2, eval_strategy="epoch"
    )
    t.train()
    store = TrajectoryStore.open(url)
    assert [r.step for r in store.rows] == [0, 4, 8]  # 32 examples / batch 8 = 4 steps an epoch
    assert [r.epoch for r in store.rows] == [0.0, 1.0, 2.0]
    logged = {e["step"]: e for e in t.state.log_history if "eval_loss" in e}
    for row in store.rows[1:]:
        assert row.metrics["eval_loss"] == pytest.approx(logged[row.step]["eval_loss"])
        assert "loss" in row.metrics


def test_resuming_a_trainer_continues_the_store(tmp_path):
    url = tmp_path / "traj"
    out = tmp_path / "out"
    first = trainer(
        model(),
        out,
        TrajectoryCallback(url, every=2),
        max_steps=4,
        save_strategy="steps",
        save_steps=4,
    )
    first.train()
    assert [r.step for r in TrajectoryStore.open(url).rows] == [0, 2, 4]
    # A new process: resume the trainer from its own checkpoint; the store goes on.
    m = model()
    second = trainer(m, out, TrajectoryCallback(url, every=2), max_steps=8)
    second.train(resume_from_checkpoint=str(out / "checkpoint-4"))
    store = TrajectoryStore.open(url)
    assert [r.step for r in store.rows] == [0, 2, 4, 6, 8]  # theta0 not written twice
    for g, v in layer_rows(m).items():
        np.testing.assert_array_equal(store.read_row(4, g), v)


def test_a_fresh_run_from_another_start_is_refused(tmp_path):
    url = tmp_path / "traj"
    trainer(model(0), tmp_path / "a", TrajectoryCallback(url, every=2), max_steps=2).train()
    before = TrajectoryStore.open(url).rows
    with pytest.raises(Conflict, match="row 0"):
        trainer(model(1), tmp_path / "b", TrajectoryCallback(url, every=2), max_steps=2).train()
    assert TrajectoryStore.open(url).rows == before


def test_bad_every_is_invalid():
    with pytest.raises(InvalidInput):
        TrajectoryCallback("x", every=0)
    with pytest.raises(InvalidInput):
        TrajectoryCallback("x", every="step")


def test_callback_rows_equal_the_ingested_trainer_checkpoints(tmp_path):
    # The two ingestion routes agree bit for bit, layout hash included: the checkpoint route
    # reads sorted safetensors files, the callback reads the live model.
    m = model()
    m.save_pretrained(tmp_path / "base")
    out = tmp_path / "out"
    callback = TrajectoryCallback(tmp_path / "live", every=2)
    trainer(m, out, callback, max_steps=4, save_strategy="steps", save_steps=2).train()
    report = ingest_checkpoints(tmp_path / "saved", out, base=tmp_path / "base")
    live, saved = TrajectoryStore.open(tmp_path / "live"), TrajectoryStore.open(tmp_path / "saved")
    assert report.rows == live.num_rows == 3
    assert saved.layout.hash == live.layout.hash
    assert [r.sha256 for r in saved.rows] == [r.sha256 for r in live.rows]
    assert [r.step for r in saved.rows] == [r.step for r in live.rows] == [0, 2, 4]
    assert saved.rows[1].metrics["loss"] == live.rows[1].metrics["loss"]


def test_sharded_parameters_are_refused_clearly(tmp_path):
    """FSDP, DeepSpeed ZeRO-3 and DTensor layouts shard the parameters: the callback says so
    on every rank before recording anything, instead of failing on shapes or recording a shard."""
    from types import SimpleNamespace

    from storage.callback import refuse_sharded

    cb = TrajectoryCallback(str(tmp_path / "traj"), every=1)
    state = SimpleNamespace(is_world_process_zero=False, global_step=0, epoch=0.0)
    with pytest.raises(InvalidInput, match="FSDP shards them"):
        cb.on_train_begin(SimpleNamespace(fsdp="full_shard"), state, None, model=model())
    zero3 = model()
    zero3.classifier.weight.ds_numel = zero3.classifier.weight.numel()  # as ZeRO-3 marks them
    with pytest.raises(InvalidInput, match="DeepSpeed ZeRO-3"):
        refuse_sharded(SimpleNamespace(fsdp=""), zero3)
    assert not TrajectoryStore.exists(str(tmp_path / "traj"))

    dist = torch.distributed
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        from torch.distributed.tensor import distribute_tensor, init_device_mesh

        mesh = init_device_mesh("cpu", (1,))
        dtensor = model()
        w = dtensor.classifier.weight
        dtensor.classifier.weight = torch.nn.Parameter(distribute_tensor(w.detach(), mesh))
        with pytest.raises(InvalidInput, match="DTensor"):
            refuse_sharded(SimpleNamespace(fsdp=""), dtensor)
    finally:
        dist.destroy_process_group()
    refuse_sharded(SimpleNamespace(fsdp=""), model())  # a plain model records
