"""A basis layer served straight from its stored chunks gives exactly the array's C-order bytes,
checks every chunk's crc32c before giving out its bytes, and never serves vanished chunks."""

from __future__ import annotations

import hashlib
import os
import shutil

import numpy as np
import pytest
import zarr

from storage.basis import BasisStore, BasisWriter, _open_array, write_rows
from storage.chunk_bytes import plain_chunks
from storage.errors import InvalidInput, NotFound, StorageError

ROWS, RANK, CHUNK = 45, 3, 8  # the last chunk holds 5 of its 8 rows


def _basis(tmp_path, values: np.ndarray, chunk_rows: int = CHUNK) -> BasisStore:
    writer = BasisWriter.create(
        str(tmp_path / "basis"), {"layer.0": values.shape}, chunk_rows=chunk_rows
    )
    _open_array(writer.loc, "layer.0", read_only=False)[:] = values
    spectrum = {"singular_values": [1.0] * RANK, "energy": [0.1] * RANK, "total_energy": 1.0}
    return writer.commit({"layer.0": spectrum}, {})


@pytest.fixture
def values():
    v = np.random.default_rng(0).standard_normal((ROWS, RANK)).astype(np.float32)
    v[8:16] = 0.0  # one whole chunk of zeros: zarr does not write it
    return v


def test_every_range_is_the_arrays_bytes(tmp_path, values):
    basis = _basis(tmp_path, values)
    assert not os.path.exists(tmp_path / "basis" / "layer.0" / "c" / "1" / "0")
    assert plain_chunks(basis._array("layer.0"))
    want = values.astype("<f4").tobytes()
    assert b"".join(basis.iter_bytes("layer.0")) == want
    assert hashlib.sha256(want).hexdigest() == basis.layer("layer.0").sha256
    rng = np.random.default_rng(1)
    edges = [0, 1, 95, 96, 97, 191, 192, len(want) - 1, len(want)]
    for start, stop in [
        *zip(edges, edges[1:], strict=False),
        *(sorted(rng.integers(0, 541, 2)) for _ in range(50)),
    ]:
        got = b"".join(basis.iter_bytes("layer.0", int(start), int(stop)))
        assert got == want[start:stop], (start, stop)
    # One item per stored chunk touched, each a view into what was read.
    blocks = list(basis.iter_bytes("layer.0", 90, 200))
    assert [len(b) for b in blocks] == [6, 96, 8] and all(isinstance(b, memoryview) for b in blocks)


def _chunk(tmp_path, index: int):
    return tmp_path / "basis" / "layer.0" / "c" / str(index) / "0"


def test_a_corrupt_chunk_is_refused_before_any_of_its_bytes(tmp_path, values):
    basis = _basis(tmp_path, values)
    raw = bytearray(_chunk(tmp_path, 2).read_bytes())
    raw[10] ^= 0x01
    _chunk(tmp_path, 2).write_bytes(bytes(raw))
    blocks = basis.iter_bytes("layer.0")
    assert len(next(blocks)) == 96 and len(next(blocks)) == 96  # chunks 0 and 1 are fine
    with pytest.raises(StorageError, match="a chunk may be corrupt"):
        next(blocks)


def test_a_truncated_chunk_is_refused(tmp_path, values):
    basis = _basis(tmp_path, values)
    raw = _chunk(tmp_path, 5).read_bytes()
    _chunk(tmp_path, 5).write_bytes(raw[:40] + raw[-4:])
    with pytest.raises(StorageError, match="a chunk may be corrupt"):
        b"".join(basis.iter_bytes("layer.0"))


def test_a_deleted_basis_is_not_served_as_zeros(tmp_path, values):
    basis = _basis(tmp_path, values)
    blocks = basis.iter_bytes("layer.0")
    next(blocks)
    shutil.rmtree(tmp_path / "basis")
    with pytest.raises(NotFound, match="deleted while it was read"):
        list(blocks)


def test_other_encodings_fall_back_to_zarr(tmp_path, values):
    """A layer written with a compressor is not plain bytes: the array route serves it."""
    _basis(tmp_path, values)
    layer = tmp_path / "basis" / "layer.0"
    shutil.rmtree(layer)
    zarr.create_array(
        str(layer), data=values, chunks=(CHUNK, RANK), compressors=[zarr.codecs.ZstdCodec()]
    )
    fresh = BasisStore.open(str(tmp_path / "basis"))
    assert not plain_chunks(fresh._array("layer.0"))
    assert b"".join(fresh.iter_bytes("layer.0", 7, 301)) == values.tobytes()[7:301]


def _written_by_zarr(tmp_path, values):
    writer = BasisWriter.create(str(tmp_path / "zarr"), {"layer.0": values.shape}, chunk_rows=CHUNK)
    _open_array(writer.loc, "layer.0", read_only=False)[:] = values
    return tmp_path / "zarr" / "layer.0" / "c"


def test_rows_written_straight_are_the_objects_zarr_writes(tmp_path, values):
    want = _written_by_zarr(tmp_path, values)
    writer = BasisWriter.create(str(tmp_path / "raw"), {"layer.0": values.shape}, chunk_rows=CHUNK)
    for start in range(0, ROWS, 2 * CHUNK):  # blocks of two chunks; the last ends at the edge
        write_rows(writer.loc, "layer.0", start, values[start : start + 2 * CHUNK])
    got = tmp_path / "raw" / "layer.0" / "c"
    for index in range(-(-ROWS // CHUNK)):
        ours, theirs = got / str(index) / "0", want / str(index) / "0"
        if theirs.exists():  # zarr skips the all-zero chunk; ours is stored, and reads as zeros
            assert ours.read_bytes() == theirs.read_bytes(), index
    assert not list(got.rglob("*.partial"))
    spectrum = {"singular_values": [1.0] * RANK, "energy": [0.1] * RANK, "total_energy": 1.0}
    basis = writer.commit({"layer.0": spectrum}, {})
    np.testing.assert_array_equal(basis.load("layer.0"), values)
    assert basis.layer("layer.0").sha256 == hashlib.sha256(values.tobytes()).hexdigest()


def test_rows_that_split_a_chunk_are_refused(tmp_path, values):
    writer = BasisWriter.create(str(tmp_path / "raw"), {"layer.0": values.shape}, chunk_rows=CHUNK)
    with pytest.raises(InvalidInput, match="whole chunks"):
        write_rows(writer.loc, "layer.0", 3, values[3:11])
    with pytest.raises(InvalidInput, match="whole chunks"):
        write_rows(writer.loc, "layer.0", 0, values[:5])
    with pytest.raises(InvalidInput, match="columns"):
        write_rows(writer.loc, "layer.0", 0, values[:8, :2])
