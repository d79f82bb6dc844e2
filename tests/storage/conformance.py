"""The trajectory-store conformance suite: every storage backend's tests subclass it.

A backend proves itself by providing a fresh store URL (the `url` fixture) and, where the
backend's bytes are not reachable through fsspec, a way to flip a byte of a stored object
(`flip_byte`). Everything else, from dtype rounding to checksum failures, is the same code.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from storage.errors import (
    Conflict,
    InvalidInput,
    LayoutMismatch,
    NotFound,
    ReadOnly,
    StorageError,
)
from storage.layout import Layout, build_layout
from storage.objects import Location
from storage.trajectory import TrajectoryStore
from tests.conftest import make_trajectory

CHUNK = 256  # columns per chunk: layer.0 (D=1230) spans 5 chunks, layer.1 (D=420) spans 2


def bf16_reference(values: np.ndarray) -> np.ndarray:
    """bfloat16 rounding as torch does it (round to nearest, ties to even), back in float32."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(values)).to(torch.bfloat16).float().numpy()


class TrajectoryStoreSuite:
    """Behaviour every trajectory store backend must show. Subclasses provide `url`."""

    @pytest.fixture
    def url(self) -> str:  # pragma: no cover - always overridden
        raise NotImplementedError("a backend's test class provides a fresh store URL")

    def flip_byte(self, url: str, key: str, position: int = -1) -> None:
        """Invert one byte of the object `key` (relative to the store root)."""
        loc = Location.from_url(url)
        data = bytearray(loc.read_bytes(*key.split("/")))
        data[position] ^= 0xFF
        loc.fs.pipe_file(loc.path(*key.split("/")), bytes(data))

    # ------------------------------------------------------------------------------ helpers
    @pytest.fixture
    def layout(self, tiny_layout) -> Layout:
        return tiny_layout

    def create(self, url: str, layout: Layout, **kw) -> TrajectoryStore:
        kw.setdefault("chunk_cols", CHUNK)
        kw.setdefault("model_name", "tiny-bert")
        return TrajectoryStore.create(url, layout, **kw)

    @staticmethod
    def snapshot(url: str) -> dict[str, bytes]:
        """Every object under the store, by key: the store's whole observable state."""
        loc = Location.from_url(url)
        if not loc.exists():
            return {}
        root = loc.path().rstrip("/") + "/"
        return {p[len(root) :]: loc.fs.cat_file(p) for p in loc.fs.find(loc.path())}

    # ------------------------------------------------------------------- create and open
    def test_create_open_round_trip(self, url, layout):
        store = self.create(url, layout, revision="abc123", attrs={"task": "sst2"})
        assert TrajectoryStore.exists(url)
        again = TrajectoryStore.open(url)
        assert again.read_only
        assert again.model_name == "tiny-bert" and again.revision == "abc123"
        assert again.manifest["attrs"] == {"task": "sst2"}
        assert again.dtype == "float32" and again.chunk_cols == CHUNK
        assert again.layout == store.layout
        assert again.layout.hash == layout.hash
        assert Layout.from_dict(json.loads(json.dumps(layout.to_dict()))).hash == layout.hash
        assert again.num_rows == 0 and again.rows == []

    def test_open_missing_store_is_not_found(self, url):
        with pytest.raises(NotFound):
            TrajectoryStore.open(url)
        assert not TrajectoryStore.exists(url)

    def test_create_refuses_an_existing_store(self, url, layout):
        store = self.create(url, layout)
        store.append(make_trajectory(layout, 1)[0])
        with pytest.raises(Conflict):
            self.create(url, layout)
        assert TrajectoryStore.open(url).num_rows == 1
        fresh = self.create(url, layout, overwrite=True)
        assert fresh.num_rows == 0 and TrajectoryStore.open(url).num_rows == 0

    def test_tampered_layout_is_refused_on_open(self, url, layout):
        self.create(url, layout)
        loc = Location.from_url(url)
        manifest = loc.read_json("tinysub.json")
        manifest["layout"]["groups"][0]["params"][0]["shape"] = [41, 30]
        loc.write_json_atomic(manifest, "tinysub.json")
        with pytest.raises(LayoutMismatch, match="corrupt"):
            TrajectoryStore.open(url)

    def test_foreign_format_is_refused(self, url, layout):
        self.create(url, layout)
        loc = Location.from_url(url)
        manifest = loc.read_json("tinysub.json")
        manifest["format"] = "something.else/9"
        loc.write_json_atomic(manifest, "tinysub.json")
        with pytest.raises(StorageError, match="something.else/9"):
            TrajectoryStore.open(url)

    # ---------------------------------------------------------------- append and read
    def test_append_and_read_block(self, url, layout):
        rows = make_trajectory(layout, 5, seed=1)
        store = self.create(url, layout)
        for i, row in enumerate(rows):
            assert store.append(row, step=10 * i, epoch=i / 2, metrics={"loss": 1.0 / (i + 1)}) == i
        reader = TrajectoryStore.open(url)
        assert reader.num_rows == 5
        assert [r.step for r in reader.rows] == [0, 10, 20, 30, 40]
        assert reader.rows[3].epoch == 1.5 and reader.rows[3].metrics == {"loss": 0.25}
        for g in layout.group_names:
            full = np.stack([r[g] for r in rows])  # (t, D)
            np.testing.assert_array_equal(reader.read_block(g), full)
            np.testing.assert_array_equal(reader.read_block(g, 100, 400), full[:, 100:400])
            np.testing.assert_array_equal(reader.read_block(g, 5, 5), full[:, 5:5])
            np.testing.assert_array_equal(reader.read_block(g, rows=[1, 2]), full[[1, 2]])
            np.testing.assert_array_equal(
                reader.read_block(g, 3, 300, rows=[4, 0, 2]), full[[4, 0, 2], 3:300]
            )
            np.testing.assert_array_equal(reader.read_row(4, g), full[4])

    def test_read_errors(self, url, layout):
        store = self.create(url, layout)
        for row in make_trajectory(layout, 2):
            store.append(row)
        with pytest.raises(InvalidInput, match="outside group"):
            store.read_block("layer.1", 0, 421)
        with pytest.raises(InvalidInput):
            store.read_block("layer.1", 10, 5)
        with pytest.raises(NotFound, match="not all committed"):
            store.read_block("layer.0", rows=[0, 2])
        with pytest.raises(NotFound):
            store.read_block("layer.0", rows=[-1])
        with pytest.raises(LayoutMismatch, match="no group"):
            store.read_block("layer.7")

    @pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
    def test_dtype_round_trip(self, url, layout, dtype):
        rows = make_trajectory(layout, 3, seed=2)
        store = self.create(url, layout, dtype=dtype)
        for row in rows:
            store.append(row)
        reader = TrajectoryStore.open(url)
        assert reader.dtype == dtype
        for g in layout.group_names:
            full = np.stack([r[g] for r in rows])
            got = reader.read_block(g)
            assert got.dtype == np.float32
            if dtype == "float32":
                np.testing.assert_array_equal(got, full)
            elif dtype == "float16":
                np.testing.assert_array_equal(got, full.astype(np.float16).astype(np.float32))
            else:
                np.testing.assert_array_equal(got, bf16_reference(full))
                # bfloat16 keeps 8 significant bits: unit roundoff 2^-8.
                assert np.all(np.abs(got - full) <= np.abs(full) * 2.0**-8)
        assert reader.verify() == []

    def test_bfloat16_rounds_to_nearest_even(self, url):
        # Bit patterns around bf16 neighbours: exact ties go to the even mantissa.
        bits = np.array(
            [
                0x3F808000,  # tie between 0x3F80 (even) and 0x3F81: down
                0x3F818000,  # tie between 0x3F81 and 0x3F82 (even): up
                0x3F808001,  # just above the tie: up
                0x3F817FFF,  # just below the tie: down
                0xBF818000,  # negative tie: magnitude up to the even 0xBF82
                0x3F7FFFFF,  # carries into the exponent: 1.0
                0x00000001,  # smallest subnormal: 0
            ],
            dtype=np.uint32,
        )
        values = bits.view(np.float32)
        expected = np.array(
            [0x3F80, 0x3F82, 0x3F81, 0x3F81, 0xBF82, 0x3F80, 0x0000], dtype=np.uint32
        )
        layout = build_layout([("encoder.layer.0.w", (values.size,))])
        store = self.create(url, layout, dtype="bfloat16")
        store.append({"layer.0": values})
        got = store.read_block("layer.0")[0]
        np.testing.assert_array_equal(got.view(np.uint32) >> 16, expected)
        np.testing.assert_array_equal(got, bf16_reference(values))

    @pytest.mark.parametrize(("dtype", "big"), [("float16", 7.0e4), ("bfloat16", 3.4e38)])
    def test_overflow_of_the_storage_dtype_is_invalid(self, url, layout, dtype, big):
        store = self.create(url, layout, dtype=dtype)
        row = make_trajectory(layout, 1)[0]
        row["layer.1"] = row["layer.1"].copy()
        row["layer.1"][7] = big
        before = self.snapshot(url)
        with pytest.raises(InvalidInput, match="overflow"):
            store.append(row)
        assert self.snapshot(url) == before and store.num_rows == 0

    # ------------------------------------------------------------- idempotence and order
    def test_write_row_is_idempotent_for_equal_bytes(self, url, layout):
        rows = make_trajectory(layout, 3, seed=3)
        store = self.create(url, layout)
        for row in rows:
            store.append(row)
        before = self.snapshot(url)
        assert store.write_row(1, rows[1], step=999) == 1
        assert self.snapshot(url) == before  # nothing rewritten, metadata kept
        changed = {g: v.copy() for g, v in rows[1].items()}
        changed["layer.1"][0] += 1e-3
        with pytest.raises(Conflict, match="row 1"):
            store.write_row(1, changed)
        assert self.snapshot(url) == before

    def test_idempotence_is_on_the_stored_bytes(self, url, layout):
        rows = make_trajectory(layout, 1, seed=4)
        store = self.create(url, layout, dtype="bfloat16")
        store.append(rows[0])
        # A change below bfloat16 precision stores the same bytes, so it is the same row.
        nudged = {g: np.nextafter(v, np.float32(np.inf)) for g, v in rows[0].items()}
        assert store.write_row(0, nudged) == 0

    def test_gaps_and_order(self, url, layout):
        rows = make_trajectory(layout, 3)
        store = self.create(url, layout)
        store.append(rows[0])
        before = self.snapshot(url)
        with pytest.raises(InvalidInput, match="before row 1"):
            store.write_row(2, rows[2])
        assert self.snapshot(url) == before
        assert store.write_row(1, rows[1]) == 1
        assert TrajectoryStore.open(url).num_rows == 2

    def test_read_only_handle_refuses_writes(self, url, layout):
        rows = make_trajectory(layout, 2)
        self.create(url, layout).append(rows[0])
        reader = TrajectoryStore.open(url)
        before = self.snapshot(url)
        with pytest.raises(ReadOnly):
            reader.append(rows[1])
        with pytest.raises(ReadOnly):
            reader.write_row(0, rows[0])
        with pytest.raises(ReadOnly):
            reader.annotate(0, {"loss": 1.0})
        assert isinstance(ReadOnly("x"), PermissionError)
        assert self.snapshot(url) == before

    @pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
    def test_non_finite_row_is_invalid_and_writes_nothing(self, url, layout, bad):
        rows = make_trajectory(layout, 2)
        store = self.create(url, layout)
        store.append(rows[0])
        before = self.snapshot(url)
        broken = {g: v.copy() for g, v in rows[1].items()}
        broken["layer.1"][-1] = bad  # the last group: the first groups would pass alone
        with pytest.raises(InvalidInput, match="NaN or Inf"):
            store.append(broken)
        assert self.snapshot(url) == before
        assert store.num_rows == 1 and TrajectoryStore.open(url).num_rows == 1

    def test_wrong_sizes_are_layout_mismatches(self, url, layout):
        row = make_trajectory(layout, 1)[0]
        store = self.create(url, layout)
        before = self.snapshot(url)
        short = {**row, "layer.1": row["layer.1"][:-1]}
        with pytest.raises(LayoutMismatch, match="420"):
            store.append(short)
        with pytest.raises(LayoutMismatch, match="missing"):
            store.append({"layer.0": row["layer.0"]})
        with pytest.raises(LayoutMismatch, match="unexpected"):
            store.append({**row, "layer.9": row["layer.1"]})
        assert isinstance(LayoutMismatch("x"), ValueError)
        assert self.snapshot(url) == before and store.num_rows == 0

    # ------------------------------------------------------------------ chunks and capacity
    def test_capacity_grows_past_the_initial_capacity(self, url, layout):
        rows = make_trajectory(layout, 7, seed=5)
        store = self.create(url, layout, capacity=2)
        reader = TrajectoryStore.open(url)
        for i, row in enumerate(rows):
            store.append(row)
            if i == 1:
                reader.refresh()
                np.testing.assert_array_equal(reader.read_row(1, "layer.0"), rows[1]["layer.0"])
        reader.refresh()  # the arrays grew under this reader
        assert reader.num_rows == 7
        for g in layout.group_names:
            np.testing.assert_array_equal(reader.read_block(g), np.stack([r[g] for r in rows]))
        assert TrajectoryStore.open(url).verify() == []

    def test_each_row_lives_in_its_own_chunks(self, url, layout):
        rows = make_trajectory(layout, 4, seed=6)
        store = self.create(url, layout)
        for i, row in enumerate(rows):
            before = self.snapshot(url)
            store.append(row)
            after = self.snapshot(url)
            touched = {k for k in after if before.get(k) != after[k]}
            chunks = {k for k in touched if "/c/" in k}
            # Only this row's chunks (key `<group>/c/<row>/<col chunk>`), its marker and the
            # row index segment that holds it change.
            expected = {
                f"{g.name}/c/{i}/{j}" for g in layout.groups for j in range(-(-g.size // CHUNK))
            }
            assert chunks == expected
            assert touched - chunks == {f"_rows/{i:08d}.json", "_rows/index/00000000.json"}

    def test_column_ranges_follow_the_chunk_grid(self, url, layout):
        store = self.create(url, layout)
        assert store.column_ranges("layer.0") == [
            (0, 256),
            (256, 512),
            (512, 768),
            (768, 1024),
            (1024, 1230),
        ]
        # Blocks are whole chunks: 600 columns round down to 512, 100 round up to one chunk.
        assert store.column_ranges("layer.0", 600) == [(0, 512), (512, 1024), (1024, 1230)]
        assert store.column_ranges("layer.1", 100) == [(0, 256), (256, 420)]

    def test_refresh_sees_rows_from_another_writer(self, url, layout):
        rows = make_trajectory(layout, 3)
        writer = self.create(url, layout)
        writer.append(rows[0])
        reader = TrajectoryStore.open(url)
        writer.append(rows[1])
        writer.append(rows[2])
        assert reader.num_rows == 1
        reader.refresh()
        assert reader.num_rows == 3
        np.testing.assert_array_equal(reader.read_row(2, "layer.1"), rows[2]["layer.1"])

    def test_rows_committed_past_the_row_index_are_seen(self, url, layout):
        # A crash between a row's marker and its row index entry leaves the index behind; a
        # store written before the index existed has none. Both open with every row.
        rows = make_trajectory(layout, 3)
        store = self.create(url, layout)
        store.append(rows[0], step=0)
        loc = Location.from_url(url)
        behind = loc.read_bytes("_rows", "index", "00000000.json")
        store.append(rows[1], step=1)
        loc.write_bytes_atomic(behind, "_rows", "index", "00000000.json")
        reader = TrajectoryStore.open(url)
        assert reader.num_rows == 2 and reader.rows == store.rows
        loc.delete("_rows", "index", recursive=True)
        assert TrajectoryStore.open(url).rows == store.rows
        # A writer's next commit writes the index again.
        writer = TrajectoryStore.open(url, read_only=False)
        writer.append(rows[2], step=2)
        assert loc.list("_rows", "index") == ["00000000.json"]
        segment = loc.read_json("_rows", "index", "00000000.json")
        assert [r["step"] for r in segment["rows"]] == [0, 1, 2]
        assert TrajectoryStore.open(url).rows == writer.rows

    def test_annotate_merges_metrics_and_keeps_the_row(self, url, layout):
        rows = make_trajectory(layout, 2)
        store = self.create(url, layout)
        for i, row in enumerate(rows):
            store.append(row, step=i, metrics={"loss": 2.0 - i})
        sha = store.rows[1].sha256
        store.annotate(1, {"eval_loss": 0.5, "loss": 0.75})
        again = TrajectoryStore.open(url)
        assert again.rows[1].metrics == {"loss": 0.75, "eval_loss": 0.5}
        assert again.rows[1].sha256 == sha and again.rows[1].step == 1
        assert again.verify() == []
        with pytest.raises(NotFound):
            store.annotate(2, {"loss": 0.0})

    # --------------------------------------------------------------------- corruption
    def test_verify_finds_a_corrupted_chunk(self, url, layout):
        rows = make_trajectory(layout, 3, seed=7)
        store = self.create(url, layout)
        for row in rows:
            store.append(row)
        assert store.verify() == []
        self.flip_byte(url, "layer.0/c/1/2", position=10)
        reader = TrajectoryStore.open(url)
        with pytest.raises(StorageError, match="corrupt"):
            reader.read_block("layer.0")
        with pytest.raises(StorageError):
            reader.read_block("layer.0", 2 * CHUNK, 3 * CHUNK, rows=[1])
        # Other chunks still read, and verify names the broken one and only it.
        np.testing.assert_array_equal(
            reader.read_block("layer.0", rows=[0, 2])[1], rows[2]["layer.0"]
        )
        problems = reader.verify()
        assert len(problems) == 1 and problems[0].startswith("row 1 layer.0")

    def test_verify_finds_a_changed_row_behind_its_marker(self, url, layout):
        rows = make_trajectory(layout, 2)
        store = self.create(url, layout)
        for row in rows:
            store.append(row)
        # A marker whose sha256 no longer matches the stored row (e.g. a chunk swapped in from
        # another row, which passes its own checksum).
        loc = Location.from_url(url)
        loc.fs.pipe_file(loc.path("layer.1/c/1/0"), loc.fs.cat_file(loc.path("layer.1/c/0/0")))
        assert TrajectoryStore.open(url).verify() == ["row 1 layer.1: sha256 mismatch"]
