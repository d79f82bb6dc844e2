"""`tinysub ingest` through the real command line entry point (`tinysub.cli.main.run`)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from storage.checkpoints import folder_layout
from storage.trajectory import TrajectoryStore
from tests.storage.checkpoint_runs import make_run
from tests.storage.conformance import TrajectoryStoreSuite
from tinysub.cli.main import run

pytest.importorskip("torch")
pytest.importorskip("transformers")

snapshot = TrajectoryStoreSuite.snapshot


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return make_run(root / "good"), make_run(root / "nan", nan_at=20)


def rows_of(store):
    return [
        {g: store.read_row(i, g) for g in store.layout.group_names} for i in range(store.num_rows)
    ]


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_ingest_checkpoints_then_resume(saved, tmp_path, capsys):
    good, _ = saved
    url = str(tmp_path / "traj")
    argv = ["ingest", str(good.folder), url, "--base", str(good.base), "--model", "tiny-bert"]
    assert run([*argv, "--revision", "r1"]) == 0
    out, err = capsys.readouterr()
    assert f"{url}: 4 rows (4 written, 0 verified, 0 skipped)" in out
    assert "write" in err  # the progress bars go to stderr
    store = TrajectoryStore.open(url)
    assert (store.model_name, store.revision, store.num_rows) == ("tiny-bert", "r1", 4)
    for got, want in zip(rows_of(store), good.rows, strict=True):
        for g in want:
            np.testing.assert_array_equal(got[g], want[g])
    assert run([*argv, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["rows"], report["written"], report["verified"]) == (4, 0, 4)
    assert report["layout_hash"] == store.layout.hash


def test_store_options(saved, tmp_path):
    good, _ = saved
    url = str(tmp_path / "traj")
    argv = ["ingest", str(good.folder), url, "--first-is-theta0", "--rule", "global", "-q"]
    assert run([*argv, "--dtype", "bfloat16", "--chunk-cols", "1000"]) == 0
    store = TrajectoryStore.open(url)
    assert store.dtype == "bfloat16" and store.chunk_cols == 1000
    assert store.layout.group_names == ["encoder"] and store.layout.rule == "global:bert"
    assert [r.step for r in store.rows] == [10, 20, 30]


def test_ingest_arrays_with_a_model_layout(saved, tmp_path):
    good, _ = saved
    path = tmp_path / "traj.npz"
    stacked = {g: np.stack([r[g] for r in good.rows]) for g in good.rows[0]}
    np.savez(path, **stacked, step=np.array([0, 10, 20, 30]))
    url = str(tmp_path / "traj")
    assert run(["ingest", str(path), url, "--layout-from", str(good.base), "-q"]) == 0
    store = TrajectoryStore.open(url)
    assert store.layout.hash == folder_layout(good.base).hash
    assert [r.step for r in store.rows] == [0, 10, 20, 30]
    for g, a in stacked.items():
        np.testing.assert_array_equal(store.read_block(g), a)


def test_nan_checkpoint_is_one_line_and_no_store(saved, tmp_path, capsys):
    _, bad = saved
    url = tmp_path / "traj"
    assert run(["ingest", str(bad.folder), str(url), "--base", str(bad.base), "-q"]) == 2
    line = one_error_line(capsys)
    assert "checkpoint-20" in line and "NaN" in line
    assert not url.exists()


def test_layout_mismatch_leaves_the_store_untouched(saved, tmp_path, capsys):
    good, _ = saved
    url = tmp_path / "traj"
    assert run(["ingest", str(good.folder), str(url), "--base", str(good.base), "-q"]) == 0
    before = snapshot(str(url))
    deep = make_run(tmp_path / "deep", steps=(5,), config_overrides={"num_hidden_layers": 3})
    capsys.readouterr()  # save_pretrained's own progress output
    assert run(["ingest", str(deep.folder), str(url), "--base", str(deep.base), "-q"]) == 2
    assert "does not match layout" in one_error_line(capsys)
    assert run(["ingest", str(good.folder), str(url), "--base", str(good.base), "--rule",
                "global", "-q"]) == 2  # fmt: skip
    assert "grouped by 'bert'" in one_error_line(capsys)
    assert snapshot(str(url)) == before


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "no theta0"),
        (["--base", "BASE", "--first-is-theta0"], "ambiguous"),
        (["--dtype", "float64"], "float64"),
        (["--chunk-cols", "0"], "chunk_cols"),
        (["--from", "pictures"], "pictures"),
        (["--base", "BASE", "--layout-from", "BASE"], "--layout-from is for arrays"),
        (["--base", "BASE", "--storage-option", "novalue"], "KEY=VALUE"),
    ],
)
def test_bad_options_are_one_line(saved, tmp_path, capsys, extra, message):
    good, _ = saved
    extra = [str(good.base) if e == "BASE" else e for e in extra]
    url = tmp_path / "traj"
    assert run(["ingest", str(good.folder), str(url), "-q", *extra]) == 2
    assert message in one_error_line(capsys)
    assert not url.exists()


def test_bad_sources(tmp_path, capsys):
    url = tmp_path / "traj"
    assert run(["ingest", str(tmp_path / "nowhere"), str(url)]) == 2
    assert "does not exist" in one_error_line(capsys)
    (tmp_path / "empty").mkdir()
    assert run(["ingest", str(tmp_path / "empty"), str(url)]) == 2
    assert "--from" in one_error_line(capsys)
    argv = ["ingest", str(tmp_path / "empty"), str(url), "--from", "checkpoints"]
    assert run([*argv, "--first-is-theta0"]) == 2
    assert "no checkpoint-<step> folders" in one_error_line(capsys)
    np.save(tmp_path / "a.npy", np.array([[1.0, np.nan]]))
    assert run(["ingest", str(tmp_path / "a.npy"), str(url)]) == 2
    assert "a.npy[0]" in one_error_line(capsys)
    assert not url.exists()
