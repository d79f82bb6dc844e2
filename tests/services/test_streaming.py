from __future__ import annotations

import asyncio
import threading

import pytest

from services.errors import RangeNotSatisfiable
from services.streaming import etag_matches, parse_range, prefetched, read_ahead


@pytest.mark.parametrize(
    "header, span",
    [
        (None, None),
        ("bytes=0-9", (0, 10)),
        ("bytes=90-", (90, 100)),
        ("bytes=90-500", (90, 100)),
        ("bytes=-10", (90, 100)),
        ("bytes=-500", (0, 100)),
        ("bytes=5-3", None),  # invalid: ignored
        ("bytes=0-1,5-6", None),  # several ranges: the whole body
        ("items=0-5", None),
        ("bytes=-", None),
    ],
)
def test_parse_range(header, span):
    assert parse_range(header, 100) == span


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=150-160", "bytes=-0"])
def test_unsatisfiable_ranges(header):
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, 100)


def test_etag_matching():
    assert etag_matches('"a", W/"b"', '"b"')
    assert etag_matches("*", '"x"')
    assert not etag_matches('"a"', '"b"')
    assert not etag_matches(None, '"b"')


def test_prefetched_reads_first_block_eagerly():
    seen = []

    def blocks():
        for i in range(3):
            seen.append(i)
            yield bytes([i])

    gen = prefetched(blocks())
    assert seen == [0]
    assert b"".join(gen) == b"\x00\x01\x02"

    def broken():
        raise OSError("corrupt chunk")
        yield b""

    with pytest.raises(OSError):
        prefetched(broken())


def test_read_ahead_slices_and_reads_the_next_block_while_sending():
    read = [threading.Event() for _ in range(3)]

    def blocks():
        for i in range(3):
            read[i].set()
            yield bytes([i]) * 5

    async def consume():
        out = []
        async for view in read_ahead(blocks(), size=2):
            i = bytes(view)[0]
            if i < 2:  # while block i is sent, block i+1 is read (without read-ahead: a hang)
                assert await asyncio.to_thread(read[i + 1].wait, 10)
            out.append(bytes(view))
        return out

    want = [bytes([i]) * n for i in range(3) for n in (2, 2, 1)]
    assert asyncio.run(consume()) == want


def test_read_ahead_raises_a_later_blocks_error():
    def blocks():
        yield b"ok"
        raise OSError("corrupt chunk")

    async def consume():
        return [bytes(v) async for v in read_ahead(blocks())]

    with pytest.raises(OSError, match="corrupt chunk"):
        asyncio.run(consume())
