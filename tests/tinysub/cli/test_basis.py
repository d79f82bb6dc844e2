"""`tinysub basis compute`: the flags become the engine's typed method, nothing is lost."""

from __future__ import annotations

import numpy as np
import pytest

from storage.basis import BasisStore
from tinysub.cli.main import run
from worker.svd.bases import task_basis
from worker.svd.method import RandomizedMethod


def compute(store, out, *flags: str) -> int:
    return run(["basis", "compute", "-s", store.url, "-o", str(out), "-k", "3", "-q", *flags])


def test_randomized_flags_reach_the_manifest_and_the_bytes(tmp_path, tiny_store):
    flags = ["--method", "randomized", "--oversample", "3", "--power-iters", "1", "--seed", "4"]
    assert compute(tiny_store, tmp_path / "cli", *flags) == 0
    cli = BasisStore.open(str(tmp_path / "cli"))
    assert cli.manifest["method"] == "randomized"
    assert cli.manifest["method_params"] == {"oversample": 3, "power_iters": 1, "seed": 4}

    same = RandomizedMethod(oversample=3, power_iters=1, seed=4)
    api = BasisStore.open(
        task_basis(tiny_store.url, str(tmp_path / "api"), 3, method=same).bases[0].url
    )
    for layer in cli.layer_names:
        assert np.array_equal(cli.load(layer), api.load(layer))


def test_gram_is_the_default_and_ignores_sketch_flags(tmp_path, tiny_store):
    assert compute(tiny_store, tmp_path / "g") == 0
    assert BasisStore.open(str(tmp_path / "g")).manifest["method"] == "gram"


@pytest.mark.parametrize(
    "flags", [["--method", "lanczos"], ["--method", "randomized", "--seed", "-1"]]
)
def test_a_bad_method_is_one_clear_error(tmp_path, tiny_store, capsys, flags):
    assert compute(tiny_store, tmp_path / "bad", *flags) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert not (tmp_path / "bad").exists()
