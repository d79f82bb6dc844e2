"""The trajectory store on a local disk: the conformance suite plus on-disk specifics."""

from __future__ import annotations

import os

import pytest

from storage.trajectory import TrajectoryStore
from tests.conftest import make_trajectory
from tests.storage.conformance import TrajectoryStoreSuite


class TestLocalDisk(TrajectoryStoreSuite):
    @pytest.fixture
    def url(self, tmp_path) -> str:
        return str(tmp_path / "traj")

    def flip_byte(self, url: str, key: str, position: int = -1) -> None:
        # Straight on the file, as a failing disk would, not through any store API.
        path = os.path.join(url, *key.split("/"))
        with open(path, "r+b") as f:
            f.seek(position, os.SEEK_END if position < 0 else os.SEEK_SET)
            byte = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte[0] ^ 0xFF]))

    def test_relative_paths_and_file_urls_name_the_same_store(
        self, tmp_path, monkeypatch, tiny_layout
    ):
        monkeypatch.chdir(tmp_path)
        store = TrajectoryStore.create("rel/traj", tiny_layout, chunk_cols=256)
        store.append(make_trajectory(tiny_layout, 1)[0])
        assert store.url == str(tmp_path / "rel" / "traj")
        assert TrajectoryStore.open(f"file://{tmp_path}/rel/traj").num_rows == 1

    def test_a_foreign_directory_is_not_taken_over(self, tmp_path, tiny_layout):
        (tmp_path / "data").mkdir()
        (tmp_path / "data" / "notes.txt").write_text("mine")
        with pytest.raises(Exception, match="not a tinysub store"):
            TrajectoryStore.create(tmp_path / "data", tiny_layout)
        assert (tmp_path / "data" / "notes.txt").read_text() == "mine"
