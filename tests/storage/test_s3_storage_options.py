"""s3:// with explicit fsspec storage options (no AWS_* environment), as the registry passes
TINYSUB_STORAGE_OPTIONS: trajectories and bases on S3 (moto's server in its own process), the
same bytes as on local disk, and listings that see what other processes wrote."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import numpy as np
import pytest

from services.local import REPO
from storage.basis import BasisStore
from storage.objects import Location
from storage.trajectory import TrajectoryStore
from tests import servers
from tests.conftest import make_trajectory
from tests.topology import child_env
from worker.svd.bases import multitask_bases, task_basis

local_s3 = servers.local_s3

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def opts(local_s3, monkeypatch):
    for name in local_s3.env:
        monkeypatch.delenv(name, raising=False)
    return local_s3.storage_options


@pytest.fixture
def prefix(local_s3, opts):
    url = f"s3://{local_s3.bucket}/options-{uuid.uuid4().hex}"
    yield url
    Location.from_url(url, opts).delete(recursive=True)


def _fill(url, layout, rows, seed, **kw) -> TrajectoryStore:
    store = TrajectoryStore.create(url, layout, model_name="tiny", chunk_cols=256, **kw)
    for row in make_trajectory(layout, rows, seed=seed):
        store.append(row)
    return store


def _raw(store: BasisStore) -> dict[str, bytes]:
    return {n: store.load(n).tobytes() for n in store.layer_names}


def test_bases_on_s3_equal_bases_on_disk(tiny_layout, opts, prefix, tmp_path):
    for name, seed in (("a", 1), ("b", 2)):
        _fill(f"{prefix}/{name}", tiny_layout, 7, seed, storage_options=opts)
        _fill(tmp_path / name, tiny_layout, 7, seed)
    kw = dict(block_cols=512)
    task_basis(f"{prefix}/a", f"{prefix}/basis-a", 4, storage_options=opts, **kw)
    on_disk = task_basis(str(tmp_path / "a"), str(tmp_path / "basis-a"), 4, **kw)
    reopened = BasisStore.open(f"{prefix}/basis-a", opts)
    assert reopened.verify() == []
    assert _raw(reopened) == _raw(on_disk.bases[0])
    # Several outputs on S3 from one pass (unified + zero-shot, the last row of each task).
    s3_multi = multitask_bases(
        {"a": f"{prefix}/a", "b": f"{prefix}/b"}, f"{prefix}/multi", 2, storage_options=opts, **kw
    )
    disk_multi = multitask_bases(
        {"a": str(tmp_path / "a"), "b": str(tmp_path / "b")}, str(tmp_path / "multi"), 2, **kw
    )
    for s3_basis, disk_basis in zip(s3_multi.bases, disk_multi.bases, strict=True):
        assert s3_basis.url.startswith(prefix) and _raw(s3_basis) == _raw(disk_basis)


def test_output_options_may_differ_from_input_options(tiny_layout, opts, prefix, tmp_path):
    _fill(tmp_path / "a", tiny_layout, 5, 3)
    report = task_basis(
        str(tmp_path / "a"), f"{prefix}/from-disk", 2, storage_options={}, out_storage_options=opts
    )
    assert report.bases[0].url.startswith("s3://")
    assert BasisStore.open(f"{prefix}/from-disk", opts).verify() == []


def test_rows_committed_by_another_process_are_seen(tiny_layout, opts, prefix, tmp_path):
    """s3fs caches a prefix's listing per process; a reader that listed `_rows/` once must
    still see a row another process commits afterwards (Location never lists from cache)."""
    url = f"{prefix}/shared"
    _fill(url, tiny_layout, 3, 4, storage_options=opts)
    reader = TrajectoryStore.open(url, storage_options=opts)
    assert reader.num_rows == 3
    row = make_trajectory(tiny_layout, 4, seed=4)[3]
    code = (
        "import json, sys, numpy as np\n"
        "from storage.trajectory import TrajectoryStore\n"
        "url, opts, path = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]\n"
        "s = TrajectoryStore.open(url, read_only=False, storage_options=opts)\n"
        "s.append(dict(np.load(path)))\n"
    )
    path = tmp_path / "row.npz"
    np.savez(path, **row)
    done = subprocess.run(
        [sys.executable, "-c", code, url, json.dumps(opts), str(path)],
        cwd=REPO,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    reader.refresh()
    assert reader.num_rows == 4
    assert TrajectoryStore.open(url, storage_options=opts).num_rows == 4
    np.testing.assert_array_equal(reader.read_block("layer.0", 0, 1230, [3])[0], row["layer.0"])


def test_listing_and_exists_are_never_stale(opts, prefix):
    loc = Location.from_url(prefix, opts)
    loc.write_json_atomic({"n": 1}, "dir", "one.json")
    assert loc.list("dir") == ["one.json"] and not loc.exists("dir", "two.json")
    # Another client (a fresh filesystem instance, as in another process) adds an object.
    other = Location.from_url(prefix, {**opts, "skip_instance_cache": True})
    assert other.fs is not loc.fs
    other.write_json_atomic({"n": 2}, "dir", "two.json")
    assert loc.list("dir") == ["one.json", "two.json"]
    assert loc.exists("dir", "two.json") and loc.read_json("dir", "two.json") == {"n": 2}
