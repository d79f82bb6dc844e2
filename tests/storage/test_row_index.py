"""Issue 12, finding 10: opening a trajectory store costs the same few reads however many rows
it holds (storage/row_index.py), and the commit markers stay the source of truth.

MANY rows span three index segments of 64 rows (storage.row_index.SEGMENT_ROWS), so a
segment boundary is crossed both while writing and while reading. fsync is switched off while
a test builds its rows: what these tests count is reads, not durability (which
test_issue12_durability.py proves with the index in place).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections import Counter
from collections.abc import Iterator
from unittest import mock

import numpy as np
import pytest

from storage.layout import build_layout
from storage.objects import Location
from storage.trajectory import TrajectoryStore

LAYOUT = build_layout([("encoder.layer.0.w", (24,)), ("encoder.layer.1.w", (8,))])
FEW, MANY = 3, 150


def _row(i: int) -> dict[str, np.ndarray]:
    return {g.name: np.full(g.size, float(i), dtype=np.float32) for g in LAYOUT.groups}


def _append(store: TrajectoryStore, upto: int) -> None:
    with mock.patch.object(os, "fsync", lambda fd: None):
        while store.num_rows < upto:
            store.append(_row(store.num_rows), step=store.num_rows)


def _store(tmp_path, rows: int) -> TrajectoryStore:
    store = TrajectoryStore.create(tmp_path / "traj", LAYOUT, chunk_cols=32)
    _append(store, rows)
    return store


@contextlib.contextmanager
def counting_reads() -> Iterator[Counter]:
    """Counts the store's small-document reads and directory listings while it is active."""
    counts: Counter = Counter()
    real_read, real_list = Location.read_bytes, Location.list

    def read_bytes(self, *parts):
        counts["reads"] += 1
        return real_read(self, *parts)

    def listing(self, *parts):
        counts["lists"] += 1
        return real_list(self, *parts)

    with (
        mock.patch.object(Location, "read_bytes", read_bytes),
        mock.patch.object(Location, "list", listing),
    ):
        yield counts


def _open_counts(url) -> tuple[Counter, TrajectoryStore]:
    with counting_reads() as counts:
        store = TrajectoryStore.open(url)
    return counts, store


def test_opening_reads_as_much_for_many_rows_as_for_few(tmp_path):
    store = _store(tmp_path, FEW)
    few, _ = _open_counts(store.url)
    _append(store, MANY)
    many, reader = _open_counts(store.url)
    assert reader.num_rows == MANY
    assert many == few, f"opening {MANY} rows cost {dict(many)}, {FEW} rows {dict(few)}"


def test_one_row_or_a_page_costs_a_read_or_two_not_one_per_row(tmp_path):
    store = _store(tmp_path, MANY)
    reader = TrajectoryStore.open(store.url)
    with counting_reads() as counts:
        info = reader.row(70)
        page = reader.row_page(60, 10)  # crosses the boundary at row 64
    assert info.index == 70 and info.step == 70
    assert [r.index for r in page] == list(range(60, 70))
    assert counts["reads"] <= 2, dict(counts)
    assert reader.row_page(MANY - 2, 10) == reader.rows[MANY - 2 :]
    assert reader.row_page(MANY + 5, 10) == []


def test_every_row_reads_back_from_the_index_as_committed(tmp_path):
    store = _store(tmp_path, MANY)
    reader = TrajectoryStore.open(store.url)
    assert reader.rows == store.rows
    assert [r.step for r in reader.rows] == list(range(MANY))
    np.testing.assert_array_equal(reader.read_row(MANY - 1, "layer.1"), _row(MANY - 1)["layer.1"])


def _index_files(url) -> dict[str, bytes]:
    loc = Location.from_url(url)
    return {name: loc.read_bytes("_rows", "index", name) for name in loc.list("_rows", "index")}


def test_a_row_whose_index_entry_was_lost_is_still_committed(tmp_path):
    # A crash between a row's marker and its index entry: the index lags one row behind.
    store = _store(tmp_path, 64)  # the index's first segment is full...
    behind = _index_files(store.url)
    _append(store, 66)  # ... and rows 64 and 65 start the second one
    index = tmp_path / "traj" / "_rows" / "index"
    shutil.rmtree(index)
    index.mkdir()
    for name, data in behind.items():
        (index / name).write_bytes(data)
    reader = TrajectoryStore.open(store.url)
    assert reader.num_rows == 66 and reader.rows == store.rows
    # The next commit brings the index up to date: opening is back to its usual reads.
    writer = TrajectoryStore.open(store.url, read_only=False)
    _append(writer, 67)
    assert sorted(_index_files(store.url)) == ["00000000.json", "00000064.json"]
    counts, again = _open_counts(store.url)
    assert again.num_rows == 67
    assert counts == _open_counts(_store(tmp_path / "small", FEW).url)[0]


def test_a_store_written_before_the_index_opens_and_gets_one(tmp_path):
    store = _store(tmp_path, 70)
    shutil.rmtree(tmp_path / "traj" / "_rows" / "index")  # as every store written before it
    assert TrajectoryStore.open(store.url).rows == store.rows
    writer = TrajectoryStore.open(store.url, read_only=False)
    _append(writer, 71)
    assert sorted(_index_files(store.url)) == ["00000000.json", "00000064.json"]
    counts, again = _open_counts(store.url)
    assert again.num_rows == 71 and again.rows[:70] == store.rows
    assert counts == _open_counts(_store(tmp_path / "small", FEW).url)[0]


@pytest.mark.parametrize("damage", [b"", b"{not json", b'{"first": 64, "rows": []}'])
def test_a_damaged_index_falls_back_to_the_markers(tmp_path, damage):
    store = _store(tmp_path, 70)
    (tmp_path / "traj" / "_rows" / "index" / "00000064.json").write_bytes(damage)
    reader = TrajectoryStore.open(store.url)
    assert reader.num_rows == 70 and reader.rows == store.rows
    # A writer's next commit writes the index again from the rows it holds.
    writer = TrajectoryStore.open(store.url, read_only=False)
    _append(writer, 71)
    counts, again = _open_counts(store.url)
    assert again.rows[:70] == store.rows
    assert counts == _open_counts(_store(tmp_path / "small", FEW).url)[0]


def test_annotating_an_indexed_row_rewrites_only_its_segment(tmp_path):
    store = _store(tmp_path, MANY)
    before = _index_files(store.url)
    store.annotate(5, {"eval_loss": 0.5})
    after = _index_files(store.url)
    assert {n for n in after if after[n] != before[n]} == {"00000000.json"}
    assert TrajectoryStore.open(store.url).row(5).metrics == {"eval_loss": 0.5}
