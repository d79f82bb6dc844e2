"""The download pipeline: what it counts as received is exactly what is written and hashed."""

from __future__ import annotations

import hashlib
import io

import pytest

from client.transfer import coalesced, write_hashed


def test_blocks_are_written_and_hashed_in_order():
    blocks = [bytes([i]) * (1000 + i) for i in range(50)]
    f, h, counted = io.BytesIO(), hashlib.sha256(), []
    write_hashed(iter(blocks), f, h, counted.append)
    assert f.getvalue() == b"".join(blocks)
    assert h.hexdigest() == hashlib.sha256(b"".join(blocks)).hexdigest()
    assert counted == [len(b) for b in blocks]


class FullDisk(io.BytesIO):
    def __init__(self, room: int) -> None:
        super().__init__()
        self.room = room

    def write(self, block) -> int:
        if self.tell() + len(block) > self.room:
            raise OSError(28, "No space left on device")
        return super().write(block)


def test_a_failed_write_stops_and_counts_only_what_was_written_and_hashed():
    blocks = [bytes([i]) * 100 for i in range(40)]
    f, h, counted = FullDisk(room=1050), hashlib.sha256(), []
    with pytest.raises(OSError, match="No space left"):
        write_hashed(iter(blocks), f, h, counted.append)
    assert counted == [100] * 10
    assert h.hexdigest() == hashlib.sha256(f.getvalue()).hexdigest()


def test_a_failed_receive_stops_the_pipeline():
    def blocks():
        yield b"a" * 10
        raise ConnectionError("peer closed")

    f, h, counted = io.BytesIO(), hashlib.sha256(), []
    with pytest.raises(ConnectionError):
        write_hashed(blocks(), f, h, counted.append)
    assert f.getvalue() == b"a" * 10 and counted == [10]


def test_pieces_are_joined_and_a_broken_body_keeps_what_arrived():
    def body():
        yield from (b"x" * 300 for _ in range(7))
        raise ConnectionError("cut")

    got = []
    with pytest.raises(ConnectionError):
        for block in coalesced(body(), size=1000):
            got.append(len(block))
    assert got == [1200, 900]  # every received byte handed on, the last 900 before the error
