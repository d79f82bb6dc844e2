"""Issue 12, finding 3: durability across power loss, and lost chunks never read as zeros.

- A chunk of a committed row that is deleted or truncated fails every read path (`read_row`,
  `read_block`, the SVD engine's chunk tasks) with a StorageError naming the store, the group
  and the row, never zeros. zarr leaves out chunks equal to the fill value, so a missing chunk
  is only data loss when the row's sha256 says so: an all-zero chunk that was never stored
  still reads as the zeros it holds.
- Every chunk file of a row, the array metadata and the directories leading to them are
  fsynced before the row's commit marker is written, and the marker before its row index entry.
- A simulated power cut (a disk that keeps only what was fsynced) at any point of an append,
  or of creating a store, leaves the last row either committed and readable or absent.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import threading
from pathlib import Path

import numpy as np
import pytest

from storage.errors import NotFound, StorageError
from storage.ingest import flat_layout
from storage.trajectory import TrajectoryStore
from worker.svd.bases import task_basis
from worker.svd.tasks import BlockTask, SourceRows, gram_block

SIZES = {"layer.0": 1230, "layer.1": 420}  # 5 + 2 chunks of 256 columns per row
CHUNK = 256
LAYOUT = flat_layout(SIZES)


def rows(t: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        {g: rng.standard_normal(d).astype(np.float32) for g, d in SIZES.items()} for _ in range(t)
    ]


def make_store(url: Path, data: list[dict], capacity: int = 128) -> TrajectoryStore:
    store = TrajectoryStore.create(url, LAYOUT, chunk_cols=CHUNK, capacity=capacity)
    for row in data:
        store.append(row)
    return store


@pytest.fixture
def store(tmp_path) -> TrajectoryStore:
    return make_store(tmp_path / "traj", rows(4))


def chunk(store: TrajectoryStore, group: str, row: int, col_chunk: int) -> Path:
    return Path(store.url, group, "c", str(row), str(col_chunk))


def block_task(store: TrajectoryStore, group: str, start: int, stop: int) -> BlockTask:
    checkpoints = tuple(range(1, store.num_rows))
    src = SourceRows(url=store.url, rows=checkpoints, ref_row=0, created_at=store.created_at)
    return BlockTask(sources=(src,), group=group, start=start, stop=stop)


def lost(store: TrajectoryStore, group: str, row: int) -> str:
    """The message a lost chunk must raise: it names the store, the group and the row."""
    return rf"(?s)(?=.*{re.escape(store.url)})(?=.*'{group}')(?=.*\brow {row}\b)"


# ------------------------------------------------------------------------ lost chunks
def test_a_deleted_chunk_fails_read_row_and_read_block(store):
    expected = TrajectoryStore.open(store.url).read_block("layer.0")
    chunk(store, "layer.0", 2, 3).unlink()
    reader = TrajectoryStore.open(store.url)
    with pytest.raises(StorageError, match=lost(store, "layer.0", 2)):
        reader.read_row(2, "layer.0")
    with pytest.raises(StorageError, match=lost(store, "layer.0", 2)):
        reader.read_block("layer.0")
    with pytest.raises(StorageError, match=lost(store, "layer.0", 2)):
        reader.read_block("layer.0", 3 * CHUNK, 4 * CHUNK, rows=[1, 2])
    # What is still there reads: the row's other chunks and the other rows.
    np.testing.assert_array_equal(reader.read_block("layer.0", 0, 3 * CHUNK), expected[:, :768])
    np.testing.assert_array_equal(reader.read_block("layer.0", rows=[0, 1, 3]), expected[[0, 1, 3]])
    np.testing.assert_array_equal(reader.read_row(2, "layer.1"), store.read_row(2, "layer.1"))
    assert reader.verify() == ["row 2 layer.0: sha256 mismatch"]


def test_a_deleted_chunk_fails_an_open_handle_too(store):
    store.read_block("layer.1")  # arrays opened, as a cached worker handle has them
    chunk(store, "layer.1", 1, 0).unlink()
    with pytest.raises(StorageError, match=lost(store, "layer.1", 1)):
        store.read_block("layer.1")


def test_a_deleted_chunk_fails_the_engine_pass(store, tmp_path):
    chunk(store, "layer.0", 3, 0).unlink()
    with pytest.raises(StorageError, match=lost(store, "layer.0", 3)):
        gram_block(block_task(store, "layer.0", 0, CHUNK))
    for method in ("gram", "randomized"):
        with pytest.raises(StorageError, match=lost(store, "layer.0", 3)):
            task_basis(store.url, str(tmp_path / f"basis-{method}"), 2, method=method)


@pytest.mark.parametrize("keep", [0, 3, 100, -4])
def test_a_truncated_chunk_fails_every_read_path(store, tmp_path, keep):
    path = chunk(store, "layer.0", 1, 2)
    data = path.read_bytes()
    path.write_bytes(data[:keep])
    reader = TrajectoryStore.open(store.url)
    for read in (
        lambda: reader.read_row(1, "layer.0"),
        lambda: reader.read_block("layer.0"),
        lambda: reader.read_block("layer.0", 2 * CHUNK, 3 * CHUNK, rows=[1]),
        lambda: gram_block(block_task(store, "layer.0", 2 * CHUNK, 3 * CHUNK)),
        lambda: task_basis(store.url, str(tmp_path / "basis"), 2),
    ):
        with pytest.raises(StorageError, match=lost(store, "layer.0", 1)):
            read()
    assert reader.verify()[0].startswith("row 1 layer.0")


def test_a_zero_chunk_zarr_never_stored_is_not_a_lost_one(tmp_path):
    data = rows(3, seed=1)
    data[1]["layer.0"][2 * CHUNK : 3 * CHUNK] = 0.0  # zarr does not store an all-zero chunk
    store = make_store(tmp_path / "traj", data)
    assert not chunk(store, "layer.0", 1, 2).exists()
    reader = TrajectoryStore.open(store.url)
    np.testing.assert_array_equal(reader.read_row(1, "layer.0"), data[1]["layer.0"])
    got = gram_block(block_task(store, "layer.0", 2 * CHUNK, 3 * CHUNK))
    assert np.isfinite(got).all()
    assert reader.verify() == []
    # The same row with a chunk that did hold data deleted is lost, zero chunk or not.
    chunk(store, "layer.0", 1, 0).unlink()
    with pytest.raises(StorageError, match=lost(store, "layer.0", 1)):
        TrajectoryStore.open(store.url).read_row(1, "layer.0")


def test_a_store_deleted_while_read_is_still_not_found(store):
    import shutil

    store.read_block("layer.0")
    shutil.rmtree(store.url)
    with pytest.raises(NotFound):
        store.read_block("layer.0")


# ------------------------------------------------------------------------- fsync order
class SyncLog:
    """Every fsync (by path) and rename (by target) the process makes, in order."""

    def __init__(self, monkeypatch) -> None:
        self.events: list[tuple[str, str]] = []
        real_fsync, real_replace = os.fsync, os.replace

        def fsync(fd: int) -> None:
            self.events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
            real_fsync(fd)

        def replace(src, dst, **kw) -> None:
            real_replace(src, dst, **kw)
            self.events.append(("replace", os.fspath(dst)))

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "replace", replace)

    def first(self, kind: str, path: str) -> int:
        return next(i for i, e in enumerate(self.events) if e == (kind, path))

    def first_touching(self, name: str) -> int:
        return next(i for i, (_, p) in enumerate(self.events) if name in p)


def test_chunks_and_directories_are_fsynced_before_the_marker(tmp_path, monkeypatch):
    store = make_store(tmp_path / "traj", rows(2), capacity=2)  # row 2 grows the arrays
    log = SyncLog(monkeypatch)
    store.append(rows(3)[2])
    marker = log.first_touching("_rows/00000002.json")  # its temporary file's fsync
    renamed = log.first("replace", f"{store.url}/_rows/00000002.json")
    assert log.events[renamed + 1] == ("fsync", f"{store.url}/_rows")
    # The row index entry is written once the marker is durable: the index never leads the
    # markers, and it is the last thing an append writes.
    assert renamed + 1 < log.first_touching("_rows/index/")
    assert log.events[-2:] == [
        ("replace", f"{store.url}/_rows/index/00000000.json"),
        ("fsync", f"{store.url}/_rows/index"),
    ]
    for group, size in SIZES.items():
        array = f"{store.url}/{group}"
        for j in range(-(-size // CHUNK)):
            path = f"{array}/c/2/{j}"
            assert log.first("replace", path) < log.first("fsync", path) < marker, path
        for d in (f"{array}/c/2", f"{array}/c", array, store.url):
            assert log.first("fsync", d) < marker, d
        # The grown shape: without it the committed row would be outside the array.
        assert log.first("fsync", f"{array}/zarr.json") < marker


# ---------------------------------------------------------------------- power cuts
class PowerCut(BaseException):
    """The machine stops: nothing after this point happens (not even `finally` cleanup that
    would reach the disk: the disk image is taken from what was fsynced before)."""


class Disk:
    """What a disk keeps across a power cut, pessimistically (ext4 without auto_da_alloc):

    - a file keeps the bytes it had at its last fsync, or none if it was never fsynced;
    - a directory keeps the entries (create, rename, unlink) it had at its last fsync.
    Everything under `root` when the Disk is made counts as already on the disk.
    """

    def __init__(self, root: Path, monkeypatch, cut_at: int | None = None) -> None:
        self.root = str(root)
        self.dirs: dict[str, dict[str, tuple[bool, int, int, int]]] = {}
        # By (inode, mtime, size): an inode number freed by a rename can be reused by a new
        # file, and the directory entry last fsynced must still find the old file's bytes.
        self.data: dict[tuple[int, int, int], bytes] = {}
        self.fsyncs, self.cut_at = 0, cut_at
        for here, _dirs, files in os.walk(self.root):
            self._sync_dir(here)
            for f in files:
                self._sync_file(os.path.join(here, f))
        real, lock = os.fsync, threading.Lock()

        def fsync(fd: int) -> None:
            with lock:  # files are fsynced from several threads: one count, one cut
                if self.fsyncs == self.cut_at:
                    raise PowerCut(f"power cut before fsync {self.fsyncs}")
                self.fsyncs += 1
                real(fd)
                path = os.readlink(f"/proc/self/fd/{fd}")
                if path == self.root or path.startswith(self.root + "/"):
                    isdir = stat.S_ISDIR(os.fstat(fd).st_mode)
                    (self._sync_dir if isdir else self._sync_file)(path)

        monkeypatch.setattr(os, "fsync", fsync)

    def _sync_dir(self, path: str) -> None:
        entries = {}
        for name in os.listdir(path):
            st = os.lstat(os.path.join(path, name))
            entries[name] = (stat.S_ISDIR(st.st_mode), st.st_ino, st.st_mtime_ns, st.st_size)
        self.dirs[path] = entries

    def _sync_file(self, path: str) -> None:
        st = os.stat(path)
        self.data[st.st_ino, st.st_mtime_ns, st.st_size] = Path(path).read_bytes()

    def after_cut(self, dest: Path) -> Path:
        """The directory tree the disk holds after the power cut, rebuilt under `dest`."""
        self._rebuild(self.root, dest)
        return dest

    def _rebuild(self, src: str, dest: Path) -> None:
        dest.mkdir(parents=True)
        for name, (isdir, ino, mtime, size) in self.dirs.get(src, {}).items():
            if isdir:
                self._rebuild(os.path.join(src, name), dest / name)
                continue
            (dest / name).write_bytes(self.data.get((ino, mtime, size), b""))


def cut_append(tmp_path: Path, monkeypatch, cut_at: int | None, capacity: int) -> Disk:
    """Two committed rows, then an append of row 2 with the power cut before fsync number
    `cut_at` (None: after the append returned); the store is `traj` on the disk."""
    disk_root = tmp_path / f"disk-{cut_at}"
    data = rows(3)
    make_store(disk_root / "traj", data[:2], capacity=capacity)
    with monkeypatch.context() as m:
        disk = Disk(disk_root, m, cut_at)
        store = TrajectoryStore.open(disk_root / "traj", read_only=False)
        with contextlib.suppress(PowerCut):
            store.append(data[2])
    return disk


def check_after_cut(url: Path, data: list[dict], before: int) -> int:
    """The store re-opens, holds `before` or `before + 1` rows, every committed row reads back
    exactly, and appending the rest works. Returns the committed rows."""
    store = TrajectoryStore.open(url, read_only=False)
    n = store.num_rows
    assert n in (before, before + 1), n
    for i in range(n):
        for g in SIZES:
            np.testing.assert_array_equal(store.read_row(i, g), data[i][g], err_msg=f"row {i}")
    assert store.verify() == []
    for row in data[n:]:
        store.append(row)
    again = TrajectoryStore.open(url)
    assert again.num_rows == len(data) and again.verify() == []
    return n


@pytest.mark.parametrize("capacity", [2, 128], ids=["arrays-grow", "room-left"])
def test_a_power_cut_at_any_point_of_an_append(tmp_path, monkeypatch, capacity):
    data = rows(3)
    total = cut_append(tmp_path / "count", monkeypatch, None, capacity).fsyncs
    committed = []
    for cut_at in [*range(total + 1), None]:
        disk = cut_append(tmp_path, monkeypatch, cut_at, capacity)
        after = disk.after_cut(tmp_path / f"after-{cut_at}")
        committed.append(check_after_cut(after / "traj", data, before=2))
    # A cut before the marker's fsync loses the row; after the append returned, it is there.
    assert committed[0] == 2 and committed[-1] == 3


def test_a_power_cut_at_any_point_of_creating_a_store(tmp_path, monkeypatch):
    data = rows(1)

    def run(cut_at: int | None, name: str) -> Disk:
        disk_root = tmp_path / f"disk-{name}"
        disk_root.mkdir()
        with monkeypatch.context() as m:
            disk = Disk(disk_root, m, cut_at)
            with contextlib.suppress(PowerCut):
                make_store(disk_root / "traj", data, capacity=2)
        return disk

    total = run(None, "count").fsyncs
    for cut_at in [*range(total + 1), None]:
        after = run(cut_at, str(cut_at)).after_cut(tmp_path / f"after-{cut_at}") / "traj"
        if cut_at is None:  # create() and append() returned: the store and its row survive
            assert TrajectoryStore.exists(after) and TrajectoryStore.open(after).num_rows == 1
        if not TrajectoryStore.exists(after):
            # No manifest, no store: creating it again over what the cut left is the way on.
            make_store(after, data, capacity=2)
            assert TrajectoryStore.open(after).verify() == []
            continue
        check_after_cut(after, data, before=0)
