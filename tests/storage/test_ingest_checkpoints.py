"""Ingesting folders of saved checkpoints into trajectory stores."""

from __future__ import annotations

import json
import shutil
import tracemalloc
import uuid

import fsspec
import numpy as np
import pytest

from storage.errors import Conflict, InvalidInput, LayoutMismatch, NotFound, StorageError
from storage.ingest import StoreOptions, ingest_checkpoints
from storage.layout import layout_from_model
from storage.trajectory import TrajectoryStore
from tests.storage.checkpoint_runs import TINY, make_run
from tests.storage.conformance import TrajectoryStoreSuite, bf16_reference

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

snapshot = TrajectoryStoreSuite.snapshot


def assert_rows(store: TrajectoryStore, rows: list[dict[str, np.ndarray]]) -> None:
    assert store.num_rows == len(rows)
    for g in store.layout.group_names:
        np.testing.assert_array_equal(store.read_block(g), np.stack([r[g] for r in rows]))


@pytest.fixture
def run(tmp_path):
    return make_run(tmp_path)


def test_base_folder_then_checkpoints(run, tmp_path):
    url = str(tmp_path / "traj")
    report = ingest_checkpoints(
        url, run.folder, base=run.base, options=StoreOptions(model_name="tiny-bert")
    )
    assert (report.rows, report.written, report.verified) == (4, 4, 0)
    store = TrajectoryStore.open(url)
    assert_rows(store, run.rows)
    assert [r.step for r in store.rows] == [0, 10, 20, 30]
    assert [r.epoch for r in store.rows] == [0.0, 0.5, 1.0, 1.5]
    assert [r.metrics for r in store.rows] == run.metrics
    assert store.model_name == "tiny-bert"
    # The layout is in the model's own parameter order, not the file's sorted order, so it is
    # the layout a live model (the training callback, the fine-tuning wrapper) computes.
    model = transformers.BertForSequenceClassification(transformers.BertConfig(**TINY))
    assert store.layout.hash == layout_from_model(model).hash
    assert store.verify() == []


def test_first_checkpoint_as_theta0(run, tmp_path):
    url = tmp_path / "traj"
    report = ingest_checkpoints(url, run.folder, first_is_theta0=True)
    assert report.rows == 3
    store = TrajectoryStore.open(url)
    assert_rows(store, run.rows[1:])
    assert [r.step for r in store.rows] == [10, 20, 30]


@pytest.mark.parametrize("fmt", ["bin", "sharded"])
def test_other_weight_formats_give_the_same_rows(tmp_path, fmt):
    run = make_run(tmp_path, fmt=fmt)
    ingest_checkpoints(tmp_path / "traj", run.folder, base=run.base)
    assert_rows(TrajectoryStore.open(tmp_path / "traj"), run.rows)


def test_bfloat16_checkpoints(tmp_path):
    run = make_run(tmp_path, dtype="bfloat16")
    options = StoreOptions(dtype="bfloat16")
    ingest_checkpoints(tmp_path / "traj", run.folder, base=run.base, options=options)
    store = TrajectoryStore.open(tmp_path / "traj")
    assert store.dtype == "bfloat16"
    for g in store.layout.group_names:
        # theta0 was saved in float32 and is rounded; the checkpoints are bf16 and stay exact.
        np.testing.assert_array_equal(store.read_row(0, g), bf16_reference(run.rows[0][g]))
        np.testing.assert_array_equal(
            store.read_block(g, rows=[1, 2, 3]), np.stack([r[g] for r in run.rows[1:]])
        )


def test_resume_verifies_the_committed_rows_and_appends_the_rest(run, tmp_path):
    url = tmp_path / "traj"
    late = run.folder / "checkpoint-30"
    held = tmp_path / "held-back"
    shutil.move(late, held)
    first = ingest_checkpoints(url, run.folder, base=run.base)
    assert (first.rows, first.written) == (3, 3)
    shutil.move(held, late)
    second = ingest_checkpoints(url, run.folder, base=run.base)
    assert (second.rows, second.written, second.verified) == (4, 1, 3)
    ingest_checkpoints(tmp_path / "ref", run.folder, base=run.base)
    resumed, ref = TrajectoryStore.open(url), TrajectoryStore.open(tmp_path / "ref")
    assert [r.sha256 for r in resumed.rows] == [r.sha256 for r in ref.rows]
    assert_rows(resumed, run.rows)
    # Ingesting again writes nothing.
    before = snapshot(str(url))
    third = ingest_checkpoints(url, run.folder, base=run.base)
    assert (third.written, third.verified) == (0, 4)
    assert snapshot(str(url)) == before


def test_resend_with_other_weights_is_a_conflict(run, tmp_path):
    url = tmp_path / "traj"
    ingest_checkpoints(url, run.folder, base=run.base)
    before = snapshot(str(url))
    other = make_run(tmp_path / "other", seed=1)
    shutil.rmtree(run.folder / "checkpoint-20")
    shutil.copytree(other.folder / "checkpoint-20", run.folder / "checkpoint-20")
    with pytest.raises(Conflict, match=r"checkpoint-20: differs from row 2"):
        ingest_checkpoints(url, run.folder, base=run.base)
    assert snapshot(str(url)) == before


def test_skipping_verification_still_checks_the_steps(run, tmp_path):
    url = tmp_path / "traj"
    ingest_checkpoints(url, run.folder, base=run.base)
    report = ingest_checkpoints(url, run.folder, base=run.base, verify_existing=False)
    assert (report.skipped, report.verified, report.written) == (4, 0, 0)
    shutil.move(run.folder / "checkpoint-20", run.folder / "checkpoint-25")
    with pytest.raises(Conflict, match="step 20, not 25"):
        ingest_checkpoints(url, run.folder, base=run.base, verify_existing=False)


def test_nan_in_a_checkpoint_names_it_and_writes_nothing(tmp_path):
    run = make_run(tmp_path, nan_at=20)
    url = tmp_path / "traj"
    with pytest.raises(InvalidInput, match=r"checkpoint-20.*NaN.*output\.dense\.weight") as err:
        ingest_checkpoints(url, run.folder, base=run.base)
    assert "\n" not in str(err.value)
    assert not TrajectoryStore.exists(url) and not url.exists()
    # An existing store is left exactly as it was.
    good = make_run(tmp_path / "good")
    ingest_checkpoints(url, good.folder, first_is_theta0=True)
    before = snapshot(str(url))
    with pytest.raises(InvalidInput, match="NaN"):
        ingest_checkpoints(url, run.folder, first_is_theta0=True)
    assert snapshot(str(url)) == before


def test_without_preflight_the_rows_before_a_bad_checkpoint_are_kept(tmp_path):
    run = make_run(tmp_path, nan_at=30)
    url = tmp_path / "traj"
    with pytest.raises(InvalidInput, match="checkpoint-30"):
        ingest_checkpoints(url, run.folder, base=run.base, preflight=False)
    store = TrajectoryStore.open(url)
    assert_rows(store, run.rows[:3])
    assert store.verify() == []


def test_layout_mismatch_is_reported_before_anything_is_written(run, tmp_path):
    wide = make_run(tmp_path / "wide", steps=(40,), config_overrides={"intermediate_size": 48})
    shutil.copytree(wide.folder / "checkpoint-40", run.folder / "checkpoint-40")
    url = tmp_path / "traj"
    with pytest.raises(LayoutMismatch, match=r"checkpoint-40 does not match layout.*shape"):
        ingest_checkpoints(url, run.folder, base=run.base)
    assert not url.exists()


def test_a_store_of_another_model_is_refused(run, tmp_path):
    url = tmp_path / "traj"
    ingest_checkpoints(url, run.folder, base=run.base, options=StoreOptions(model_name="a"))
    with pytest.raises(Conflict, match="model_name 'a', not 'b'"):
        ingest_checkpoints(url, run.folder, base=run.base, options=StoreOptions(model_name="b"))
    deep = make_run(tmp_path / "deep", config_overrides={"num_hidden_layers": 3})
    before = snapshot(str(url))
    with pytest.raises(LayoutMismatch, match="layer.2"):
        ingest_checkpoints(url, deep.folder, base=deep.base)
    assert snapshot(str(url)) == before


def test_bad_inputs(run, tmp_path):
    url = tmp_path / "traj"
    with pytest.raises(NotFound, match="does not exist"):
        ingest_checkpoints(url, tmp_path / "nowhere", base=run.base)
    with pytest.raises(NotFound, match="does not exist"):
        ingest_checkpoints(url, run.folder, base=tmp_path / "no-base")
    with pytest.raises(InvalidInput, match="no theta0"):
        ingest_checkpoints(url, run.folder)
    with pytest.raises(InvalidInput, match="ambiguous"):
        ingest_checkpoints(url, run.folder, base=run.base, first_is_theta0=True)
    with pytest.raises(InvalidInput, match="no checkpoint-<step> folders"):
        ingest_checkpoints(url, run.base, first_is_theta0=True)
    (run.folder / "checkpoint-20" / "model.safetensors").unlink()
    (run.folder / "checkpoint-20" / "config.json").unlink()
    with pytest.raises(NotFound, match="checkpoint-20 holds no model weights"):
        ingest_checkpoints(url, run.folder, base=run.base)
    (run.folder / "checkpoint-20" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(StorageError, match="not a readable safetensors"):
        ingest_checkpoints(url, run.folder, base=run.base)
    assert not url.exists()


def test_into_an_fsspec_url(run):
    url = f"memory://tinysub-test-{uuid.uuid4().hex}/traj"
    try:
        ingest_checkpoints(url, run.folder, base=run.base)
        assert_rows(TrajectoryStore.open(url), run.rows)
    finally:
        fsspec.filesystem("memory").rm(url.split("://")[1].split("/")[0], recursive=True)


def test_memory_stays_one_checkpoint(tmp_path):
    # numpy allocations are traced; tensors are read from memory-mapped files one at a time.
    # Peak traced memory must not grow with the number of checkpoints.
    def peak(steps):
        run = make_run(
            tmp_path / f"r{len(steps)}", steps=steps, config_overrides={"intermediate_size": 1024}
        )
        ingest_checkpoints(tmp_path / f"warm{len(steps)}", run.folder, first_is_theta0=True)
        tracemalloc.start()
        ingest_checkpoints(tmp_path / f"t{len(steps)}", run.folder, first_is_theta0=True)
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        row_bytes = 4 * sum(v.size for v in run.rows[0].values())
        return top, row_bytes

    small, row_bytes = peak((1, 2))
    large, _ = peak(tuple(range(1, 9)))
    assert large < small + row_bytes / 4
    assert large < 4 * row_bytes


def test_trainer_state_metadata_is_read(run, tmp_path):
    state = json.loads((run.folder / "checkpoint-10" / "trainer_state.json").read_text())
    assert state["global_step"] == 10
    ingest_checkpoints(tmp_path / "traj", run.folder, first_is_theta0=True)
    row = TrajectoryStore.open(tmp_path / "traj").rows[0]
    assert row.metrics == {
        "loss": 1.0,
        "learning_rate": 1e-3,
        "eval_loss": 2.0,
        "eval_accuracy": 0.5,
    }
