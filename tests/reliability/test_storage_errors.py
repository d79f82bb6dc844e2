"""Storage failures: a full disk is a clear error that commits nothing half-written and that
ingestion and uploads recover from; a corrupted chunk is caught by its crc32c and never served
(and a chunk corrupted *with* a valid crc is caught by the client's sha256).

The full disk is `tests.reliability.quota_fs`: a real filesystem through fsspec whose writes
fail with ENOSPC past a quota, the way an object store or a full volume fails.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import google_crc32c
import numpy as np
import pytest
from fastapi.testclient import TestClient

from client import Client
from services.app import create_app
from storage.basis import BasisStore
from storage.errors import InsufficientStorage, StorageError
from storage.ingest import flat_layout, ingest_arrays
from storage.trajectory import TrajectoryStore
from tests.conftest import make_trajectory
from tests.reliability import snapshots
from tests.services.helpers import add_task, auth, make_settings, token_for, write_store
from tinysub.cli.main import run
from worker.executors import LocalExecutor
from worker.svd.engine import BasisRequest, compute_bases
from worker.svd.sources import make_sources

ROW_BYTES = 4 * (1230 + 420)  # one row of the small layout, float32


# ------------------------------------------------------------------------------ disk full
def test_disk_full_while_appending_commits_only_whole_rows_and_resumes(quota, layout):
    url = "quota://stores/traj"
    store = TrajectoryStore.create(url, layout, chunk_cols=256, storage_options=quota.options)
    rows = make_trajectory(layout, 6, seed=1)
    quota.fill(leave=int(2.5 * ROW_BYTES))
    with pytest.raises(InsufficientStorage, match="No space left") as info:
        for row in rows:
            store.append(row)
    assert isinstance(info.value, StorageError)
    again = TrajectoryStore.open(url, read_only=False, storage_options=quota.options)
    assert again.num_rows == store.num_rows == 2  # the third row never became visible
    assert again.verify() == []
    quota.free()
    for row in rows[again.num_rows :]:
        again.append(row)
    for g in layout.group_names:
        np.testing.assert_array_equal(again.read_block(g), np.stack([r[g] for r in rows]))
    assert again.verify() == []


def test_disk_full_in_the_cli_is_one_line_and_resumable(quota, tmp_path, capsys):
    sizes = {"layer.0": 1230, "layer.1": 420}
    rng = np.random.default_rng(0)
    arrays = {g: rng.standard_normal((5, d)).astype(np.float32) for g, d in sizes.items()}
    np.savez(tmp_path / "rows.npz", **arrays)
    url = "quota://stores/cli"
    TrajectoryStore.create(url, flat_layout(sizes), chunk_cols=256, storage_options=quota.options)
    quota.fill(leave=int(1.5 * ROW_BYTES))
    argv = ["ingest", str(tmp_path / "rows.npz"), url, "-q",
            "--storage-option", f"root={quota.options['root']}",
            "--storage-option", f"quota_bytes={quota.options['quota_bytes']}"]  # fmt: skip
    assert run(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "No space left" in err, err
    assert TrajectoryStore.open(url, storage_options=quota.options).num_rows == 1
    quota.free()
    report = ingest_arrays(url, tmp_path / "rows.npz", options=_opts(quota))
    assert (report.verified, report.written, report.rows) == (1, 4, 5)


def _opts(quota):
    from storage.ingest import StoreOptions

    return StoreOptions(storage_options=quota.options)


def test_disk_full_while_writing_a_basis_leaves_nothing(quota, tmp_path, tiny_store):
    out = "quota://bases/b"
    quota.fill(leave=8000)  # room for the arrays' metadata, not for V
    sources = make_sources([tiny_store], ["all"], "delta")
    with pytest.raises(InsufficientStorage):
        compute_bases(
            sources,
            [BasisRequest(out, 3, storage_options=quota.options)],
            executor=LocalExecutor(2),
            block_cols=256,
        )
    # No manifest, and no arrays either: the failed computation cleaned up after itself.
    assert not (quota.root / "bases" / "b").exists()
    quota.free()
    report = compute_bases(
        sources, [BasisRequest(out, 3, storage_options=quota.options)], block_cols=256
    )
    assert report.bases[0].verify() == []


def test_disk_full_in_the_registry_is_507_and_the_upload_resumes(quota, tmp_path, layout):
    settings = make_settings(
        tmp_path, store_root="quota://store", storage_options=quota.options, run_jobs=False
    )
    app = create_app(settings)
    token = token_for(app, "admin")
    local = write_store(tmp_path, "local", layout, rows=5, seed=3)
    with TestClient(app) as http:
        c = Client("http://testserver", token=token, http=http, cache_dir=tmp_path / "cache")
        c.create_task("a", model="tiny", layout=layout)
        c.request_json("POST", "/v1/tasks/a/trajectory", json={})
        # A row takes its size twice while committed (staged parts, then the row).
        quota.fill(leave=int(5.5 * ROW_BYTES))
        with pytest.raises(InsufficientStorage) as info:
            c.upload_trajectory("a", local.url, part_bytes=2048)
        assert info.value.status_code == 507 and "No space left" in str(info.value)
        status = c.trajectory("a")
        assert 2 <= status["rows"] < 5
        assert status["row_sha256"] == [r.sha256 for r in local.rows[: status["rows"]]]
        # A basis job on the full disk fails with the reason and leaves nothing behind.
        job = c.compute_basis("a", "task", rank=1)
        app.state.runner.run_pending()
        job.refresh()
        assert job.status == "failed" and job.error_code == "insufficient_storage", job.data
        assert not (quota.root / "store" / "bases" / "a" / "task" / "v1").exists()
        quota.free()
        done = c.upload_trajectory("a", local.url, part_bytes=2048)
        assert done["row_sha256"] == [r.sha256 for r in local.rows]
        assert TrajectoryStore.open(done["url"], storage_options=quota.options).verify() == []
        job = c.compute_basis("a", "task", rank=2)
        app.state.runner.run_pending()
        assert job.wait(timeout=30).status == "succeeded"


# --------------------------------------------------------------------------- corruption
def _chunks(array_dir: Path) -> list[Path]:
    """The chunk files of a 2-d array in row order (keys c/<row chunk>/<col chunk>)."""
    found = [p for p in (array_dir / "c").rglob("*") if p.is_file()]
    return sorted(found, key=lambda p: tuple(int(x) for x in p.relative_to(array_dir / "c").parts))


def _flip(chunk: Path, *, keep_crc: bool = False) -> None:
    """Change one byte of a chunk's data; with keep_crc, recompute its crc32c trailer too (a
    corruption the storage layer cannot see)."""
    raw = bytearray(chunk.read_bytes())
    raw[8] ^= 0x40
    if keep_crc:
        raw[-4:] = struct.pack("<I", google_crc32c.value(bytes(raw[:-4])))
    chunk.write_bytes(bytes(raw))


def test_corrupt_trajectory_chunk_fails_reads_and_jobs_cleanly(tmp_path, layout):
    app = create_app(make_settings(tmp_path))
    api = TestClient(app, headers=auth(token_for(app, "admin")))
    store = add_task(api, tmp_path, "a", layout, rows=6)
    _flip(_chunks(Path(store.url) / "layer.1")[3])
    with pytest.raises(StorageError, match="corrupt"):
        TrajectoryStore.open(store.url).read_block("layer.1")
    assert any("layer.1" in p for p in TrajectoryStore.open(store.url).verify())
    before = snapshots.files(app.state.registry.settings.data_dir)
    job = api.post("/v1/tasks/a/bases", json={"kind": "task", "rank": 2}).json()
    app.state.runner.run_pending()
    job = api.get(f"/v1/jobs/{job['id']}").json()
    assert job["status"] == "failed" and job["error_code"] == "storage_error", job
    assert "corrupt" in job["error"]
    assert api.get("/v1/tasks/a/bases/task").status_code == 404  # nothing ready, no latest
    assert snapshots.files(app.state.registry.settings.data_dir) == before  # no basis files


@pytest.fixture
def big_basis(tmp_path):
    """A ready task basis with a (40,000 x 4) layer in 40 chunks of 1,000 rows, served in
    64 KiB blocks, so a response spans many chunks."""
    from storage.layout import build_layout

    layout = build_layout([("encoder.layer.0.w", (200, 200)), ("encoder.layer.1.w", (10, 10))])
    app = create_app(make_settings(tmp_path, stream_block_bytes=1 << 16))
    api = TestClient(app, headers=auth(token_for(app, "admin")), raise_server_exceptions=False)
    add_task(api, tmp_path, "a", layout, rows=6, chunk_cols=1000)
    api.post("/v1/tasks/a/bases", json={"kind": "task", "rank": 4})
    app.state.runner.run_pending()
    manifest = api.get("/v1/tasks/a/bases/task").json()
    info = manifest["layers"][0]
    url = app.state.registry.basis_url("a", "task", 1)
    return app, api, info, Path(url)


def test_corrupt_first_chunk_is_a_clean_500_and_no_bytes(big_basis):
    _app, api, info, url = big_basis
    _flip(_chunks(url / "layer.0")[0])
    r = api.get(info["url"])
    assert r.status_code == 500 and r.json()["code"] == "storage_error"
    assert "corrupt" in r.json()["message"]
    r = api.get(info["url"], headers={"Range": "bytes=0-99"})
    assert r.status_code == 500 and r.json()["code"] == "storage_error"


def test_corrupt_later_chunk_is_never_sent(big_basis, tmp_path):
    app, api, info, url = big_basis
    good = BasisStore.open(url).load("layer.0").tobytes()
    chunks = _chunks(url / "layer.0")
    assert len(chunks) == 40
    _flip(chunks[30])  # rows 30,000-30,999: bytes 480,000-495,999
    r = api.get(info["url"])
    # The response had started; it is cut before the corrupt chunk, never carrying its bytes.
    body = r.content
    assert len(body) <= 480_000 and body == good[: len(body)]
    # A range inside the corrupt chunk is refused before anything is sent.
    r = api.get(info["url"], headers={"Range": "bytes=480000-480099"})
    assert r.status_code == 500 and r.json()["code"] == "storage_error"
    # The client never caches it. It resumes the cut body from its last byte, so the server's
    # refusal of the corrupt chunk is what it reports (a short body if the resume is not reached).
    c = Client("http://testserver", token=api.headers["authorization"].split()[1],
               http=api, cache_dir=tmp_path / "cache")  # fmt: skip
    with pytest.raises(StorageError, match="a chunk may be corrupt|wrong size or sha256"):
        c.pull_basis("a", "task", layers=["layer.0"])
    assert not c.cache.blob_path(info["sha256"]).exists()


def test_chunk_corrupted_behind_the_checksum_is_caught_by_the_client(big_basis, tmp_path):
    _app, api, info, url = big_basis
    _flip(_chunks(url / "layer.0")[5], keep_crc=True)  # zarr reads it without complaint
    c = Client("http://testserver", token=api.headers["authorization"].split()[1],
               http=api, cache_dir=tmp_path / "cache")  # fmt: skip
    with pytest.raises(StorageError, match="sha256"):
        c.pull_basis("a", "task", layers=["layer.0"])
    assert not c.cache.blob_path(info["sha256"]).exists()
    assert not list((tmp_path / "cache").rglob("*.incomplete"))
    # The server's own check finds it too.
    assert BasisStore.open(url).verify() == ["layer.0: sha256 mismatch"]
    assert (
        json.loads((url / "tinysub-basis.json").read_text())["layers"][0]["sha256"]
        == (info["sha256"])
    )
    assert os.path.exists(url / "tinysub-basis.json")
