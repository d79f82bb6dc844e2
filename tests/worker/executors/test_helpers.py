"""The pieces executors share: the reduction plan, error mapping, Ray's job settings."""

from __future__ import annotations

import os
import pathlib
import sys

import pytest

from storage.errors import InvalidInput, NotFound
from worker.executors.base import TaskFailed, describe, task_error, tree_reduce
from worker.executors.memory import release_large_buffers
from worker.executors.ray import gpu_share, package_root, worker_runtime_env
from worker.svd.tasks import BlockTask, HashTask, ProjectTask, SourceRows


@pytest.mark.parametrize("n", range(1, 10))
def test_tree_reduce_has_logarithmic_depth_and_keeps_order(n):
    depth = {}

    def combine(a, b):
        node = f"({a}{b})"
        depth[node] = 1 + max(depth.get(a, 0), depth.get(b, 0))
        return node

    leaves = [chr(ord("a") + i) for i in range(n)]
    root = tree_reduce(leaves, combine)
    assert root.replace("(", "").replace(")", "") == "".join(leaves)
    assert depth.get(root, 0) == (n - 1).bit_length()  # ceil(log2 n)


def test_tree_reduce_of_nothing_is_an_error():
    with pytest.raises(ValueError, match="nothing to reduce"):
        tree_reduce([], lambda a, b: a)


def test_task_error_keeps_tinysub_errors_and_wraps_others():
    block = BlockTask((SourceRows("/s", (1, 2)),), "layer.3", 0, 512)
    missing = NotFound("row 7 is missing")
    assert task_error(missing, len, block, "dask") is missing
    assert missing.__notes__ == ["len failed on BlockTask(layer.3[0:512]) (dask executor)"]

    boom = MemoryError("out of memory")
    err = task_error(boom, len, ProjectTask(block, None, ()), "ray")
    assert isinstance(err, TaskFailed) and err.__cause__ is boom
    assert str(err) == (
        "len failed on ProjectTask(layer.3[0:512]) (ray executor): MemoryError: out of memory"
    )


def test_describe_is_short_for_any_item():
    assert describe(HashTask("/b", "layer.0", 64)) == "HashTask(layer.0 of /b)"
    assert len(describe(list(range(10_000)))) < 80


def test_gpu_share_asks_only_for_gpus_that_exist(monkeypatch):
    monkeypatch.delenv("TINYSUB_DEVICE", raising=False)
    assert gpu_share({"CPU": 16}) == 0
    assert gpu_share({"CPU": 16, "GPU": 2}) == 0.125  # every CPU slot gets an even share
    assert gpu_share({"CPU": 2, "GPU": 4}) == 1.0
    assert gpu_share({"CPU": 3, "GPU": 1}) == 0.3333  # rounded down: shares never overbook
    assert gpu_share({"CPU": 16, "GPU": 2}, device="cpu") == 0
    monkeypatch.setenv("TINYSUB_DEVICE", "cpu")
    assert gpu_share({"CPU": 16, "GPU": 2}) == 0
    assert gpu_share({"CPU": 16, "GPU": 2}, requested=0.5) == 0.5
    with pytest.raises(InvalidInput, match="has no GPU"):
        gpu_share({"CPU": 16}, requested=1)
    with pytest.raises(InvalidInput, match="between 0 and 1"):
        gpu_share({"CPU": 16, "GPU": 1}, requested=-1)


def test_ray_workers_get_this_checkout_on_their_path(monkeypatch):
    monkeypatch.setenv("TINYSUB_DEVICE", "numpy")
    monkeypatch.delenv("PYTHONPATH", raising=False)
    root = pathlib.Path(package_root())
    assert (root / "worker" / "executors" / "ray.py").is_file()
    assert (root / "storage" / "trajectory" / "__init__.py").is_file()

    env = worker_runtime_env({"env_vars": {"OTHER": "1"}, "pip": ["x"]})
    assert env["pip"] == ["x"]
    assert env["env_vars"] == {
        "OTHER": "1",
        "PYTHONPATH": str(root),
        "TINYSUB_DEVICE": "numpy",
        "MALLOC_MMAP_THRESHOLD_": str(1 << 20),
    }

    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    path = worker_runtime_env()["env_vars"]["PYTHONPATH"]
    assert path == f"{root}{os.pathsep}${{PYTHONPATH}}"  # the node's own entries come after
    # What the caller sets wins.
    assert worker_runtime_env({"env_vars": {"PYTHONPATH": "/mine"}})["env_vars"]["PYTHONPATH"] == (
        "/mine"
    )


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_large_buffers_are_handed_back_on_linux():
    assert release_large_buffers() is True
