"""The basis store: V (D, k) per layer group, with spectrum, provenance and sha256.

On-disk format (under the basis URL)::

    zarr.json                 the zarr v3 root group
    layer.0/ ...              V of that group, float32 (D, k), chunks (chunk_rows, k), crc32c
    tinysub-basis.json        the manifest, written last: its presence means "complete"

Workers write disjoint row blocks of V (aligned with the trajectory's column chunks, so no two
writers share a chunk). Only after every block is written does `commit()` read each layer back
in order, hash its C-order float32 bytes (exactly the bytes the registry serves), and write the
manifest atomically. A crash before that leaves no manifest, so a half-written basis can never
be opened, served or mistaken for a finished one.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import zarr
from zarr.codecs import BytesCodec, Crc32cCodec

from storage.chunk_bytes import iter_layer_bytes, plain_chunks, write_layer_rows
from storage.errors import (
    Conflict,
    InvalidInput,
    LayoutMismatch,
    NotFound,
    StorageError,
    storage_error,
)
from storage.layout import Layout
from storage.objects import Location, zarr_store

if TYPE_CHECKING:
    from zarr.types import AnyArray

log = logging.getLogger(__name__)

FORMAT = "tinysub.basis/1"
MANIFEST = "tinysub-basis.json"


@dataclass(frozen=True)
class LayerInfo:
    name: str
    rows: int  # D
    rank: int  # k actually kept
    chunk_rows: int
    singular_values: list[float]
    energy: list[float]
    total_energy: float
    sha256: str
    # RMS motion of the trajectory along each direction (worker.svd.gram.SmallSolve.extent);
    # None for bases computed before it was recorded or where it cannot be measured.
    extent: list[float] | None = None

    @property
    def nbytes(self) -> int:
        return 4 * self.rows * self.rank

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "shape": [self.rows, self.rank],
            "dtype": "float32",
            "chunk_rows": self.chunk_rows,
            "singular_values": self.singular_values,
            "energy": self.energy,
            "total_energy": self.total_energy,
            "sha256": self.sha256,
            "nbytes": self.nbytes,
            **({} if self.extent is None else {"extent": self.extent}),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LayerInfo:
        return cls(
            name=d["name"],
            rows=int(d["shape"][0]),
            rank=int(d["shape"][1]),
            chunk_rows=int(d["chunk_rows"]),
            singular_values=list(d["singular_values"]),
            energy=list(d["energy"]),
            total_energy=float(d["total_energy"]),
            sha256=d["sha256"],
            extent=None if d.get("extent") is None else [float(x) for x in d["extent"]],
        )


def _open_array(loc: Location, name: str, *, read_only: bool) -> AnyArray:
    return zarr.open_array(
        zarr_store(loc, read_only=read_only), path=name, mode="r" if read_only else "r+"
    )


def write_rows(loc: Location, name: str, start: int, block: npt.NDArray[np.float32]) -> None:
    """V rows [start, start + len(block)) of one layer of an uncommitted basis: whole stored
    chunks written straight (storage/chunk_bytes.py) where the layer is plain bytes + crc32c,
    else through zarr."""
    arr = _open_array(loc, name, read_only=False)
    if plain_chunks(arr):
        write_layer_rows(loc, name, arr, start, block)
    else:
        arr[start : start + block.shape[0], :] = block


class BasisWriter:
    """A basis being computed: arrays exist, the manifest does not yet."""

    def __init__(
        self, loc: Location, shapes: Mapping[str, tuple[int, int]], chunk_rows: int
    ) -> None:
        self.loc = loc
        self.shapes = dict(shapes)
        self.chunk_rows = chunk_rows

    @classmethod
    def create(
        cls,
        url: str | os.PathLike[str],
        shapes: Mapping[str, tuple[int, int]],
        *,
        chunk_rows: int,
        storage_options: dict[str, Any] | None = None,
        overwrite: bool = False,
    ) -> BasisWriter:
        loc = Location.from_url(url, storage_options)
        if loc.exists(MANIFEST) and not overwrite:
            raise Conflict(f"a finished basis already exists at {loc.url}")
        for name, (_rows, rank) in shapes.items():
            if rank < 1:
                raise InvalidInput(f"layer {name!r} would have rank {rank}")
        if loc.exists():
            # A previous attempt that never committed, or a finished basis being replaced: the
            # manifest goes first, so no reader ever sees a basis with some chunks gone.
            loc.delete(MANIFEST)
            loc.delete(recursive=True)
        try:
            root = zarr.open_group(zarr_store(loc), mode="w")
            for name, (rows, rank) in shapes.items():
                root.create_array(
                    name,
                    shape=(rows, rank),
                    chunks=(min(chunk_rows, rows), rank),
                    dtype="float32",
                    fill_value=0,
                    compressors=[Crc32cCodec()],
                    serializer=BytesCodec(endian="little"),
                    filters=None,
                )
        except OSError as exc:
            raise storage_error(f"creating the basis store at {loc.url} failed", exc) from exc
        return cls(loc, shapes, chunk_rows)

    def discard(self) -> None:
        """Remove the uncommitted arrays (best effort: after a failed computation, so nothing
        half-written lingers). A committed basis is left alone."""
        try:
            if not self.loc.exists(MANIFEST):
                self.loc.delete(recursive=True)
        except Exception:  # noqa: BLE001 - the storage that just failed may fail again
            log.warning("could not remove the uncommitted basis at %s", self.url, exc_info=True)

    @property
    def url(self) -> str:
        return self.loc.url

    def commit(self, layers: Mapping[str, Mapping[str, Any]], meta: dict[str, Any]) -> BasisStore:
        """Hash every layer as stored and write the manifest. `layers[name]` holds the spectrum
        (singular_values, energy, total_energy) and optionally the trajectory's `extent` and a
        precomputed `sha256`."""
        infos = []
        for name, (rows, rank) in self.shapes.items():
            spec = layers[name]
            sha = spec.get("sha256") or layer_sha256(self.loc, name, self.chunk_rows)
            infos.append(
                LayerInfo(
                    name=name,
                    rows=rows,
                    rank=rank,
                    chunk_rows=self.chunk_rows,
                    singular_values=[float(x) for x in spec["singular_values"]],
                    energy=[float(x) for x in spec["energy"]],
                    total_energy=float(spec["total_energy"]),
                    sha256=sha,
                    extent=None
                    if spec.get("extent") is None
                    else [float(x) for x in spec["extent"]],
                )
            )
        manifest = dict(meta)
        manifest.update(
            {"format": FORMAT, "created_at": time.time(), "layers": [i.to_dict() for i in infos]}
        )
        self.loc.write_json_atomic(manifest, MANIFEST)
        return BasisStore(self.loc, manifest)


def layer_sha256(loc: Location, name: str, chunk_rows: int) -> str:
    """sha256 of a stored layer's C-order float32 bytes, read back block by block."""
    arr = _open_array(loc, name, read_only=True)
    h = hashlib.sha256()
    if plain_chunks(arr):  # the stored bytes themselves, each chunk's crc32c checked
        nbytes = 4 * arr.shape[0] * arr.shape[1]
        for view in iter_layer_bytes(loc, name, arr, 0, nbytes, lambda: True):
            h.update(view)
        return h.hexdigest()
    rows = arr.shape[0]
    step = max(chunk_rows, (1 << 24) // max(1, 4 * arr.shape[1]) // chunk_rows * chunk_rows)
    for a in range(0, rows, step):
        block = np.ascontiguousarray(arr[a : a + step], dtype="<f4")
        h.update(block.data.cast("B"))
    return h.hexdigest()


class BasisStore:
    """A finished basis, read-only. Open with `BasisStore.open(url)`."""

    def __init__(self, loc: Location, manifest: dict[str, Any]) -> None:
        self.loc = loc
        self.manifest = manifest
        self.layers = {d["name"]: LayerInfo.from_dict(d) for d in manifest["layers"]}
        self._arrays: dict[str, AnyArray] = {}

    @classmethod
    def open(
        cls, url: str | os.PathLike[str], storage_options: dict[str, Any] | None = None
    ) -> BasisStore:
        loc = Location.from_url(url, storage_options)
        if not loc.exists(MANIFEST):
            raise NotFound(f"no finished basis at {loc.url} (no {MANIFEST})")
        manifest = loc.read_json(MANIFEST)
        if manifest.get("format") != FORMAT:
            raise StorageError(f"{loc.url} holds format {manifest.get('format')!r}")
        return cls(loc, manifest)

    @classmethod
    def exists(
        cls, url: str | os.PathLike[str], storage_options: dict[str, Any] | None = None
    ) -> bool:
        return Location.from_url(url, storage_options).exists(MANIFEST)

    @property
    def url(self) -> str:
        return self.loc.url

    @property
    def layer_names(self) -> list[str]:
        return list(self.layers)

    @property
    def layout(self) -> Layout | None:
        data = self.manifest.get("layout")
        return Layout.from_dict(data) if data else None

    def check_layout(self, layout: Layout, what: str = "the model") -> None:
        """Refuse to apply this basis to parameters of another layout (another model, or other
        grouping rules): `LayoutMismatch` naming both hashes. Bases written without a layout
        in their manifest are checked by layer names and row counts."""
        mine = self.layout
        if mine is not None:
            if mine.hash != layout.hash:
                raise LayoutMismatch(
                    f"the basis at {self.url} was built for layout {mine.hash[:12]} but "
                    f"{what} has layout {layout.hash[:12]}: it is a basis of another model"
                )
            return
        sizes = {g.name: g.size for g in layout.groups}
        have = {n: i.rows for n, i in self.layers.items()}
        if have != sizes:
            raise LayoutMismatch(
                f"the basis at {self.url} has layers {have} but {what} has groups {sizes}"
            )

    def layer(self, name: str) -> LayerInfo:
        if name not in self.layers:
            raise NotFound(f"basis at {self.url} has no layer {name!r}; it has {self.layer_names}")
        return self.layers[name]

    def _array(self, name: str) -> AnyArray:
        self.layer(name)
        if name not in self._arrays:
            try:
                self._arrays[name] = _open_array(self.loc, name, read_only=True)
            except (KeyError, FileNotFoundError) as exc:
                raise NotFound(f"layer {name!r} of the basis at {self.url} is gone") from exc
        return self._arrays[name]

    def _read(self, name: str, rows: slice) -> npt.NDArray[np.float32]:
        """Rows of one layer as C-order little-endian float32; a corrupt chunk (its crc32c
        fails) is a StorageError and a basis deleted under this handle is NotFound, never
        bytes (zarr would hand back the fill value for chunks that vanished)."""
        arr = self._array(name)
        try:
            block = np.ascontiguousarray(arr[rows], dtype="<f4")
        except (KeyError, FileNotFoundError) as exc:
            raise NotFound(f"the basis at {self.url} was deleted while it was read") from exc
        except (OSError, RuntimeError, ValueError) as exc:
            raise StorageError(
                f"reading layer {name!r} of {self.url} failed (a chunk may be corrupt): {exc}"
            ) from exc
        if not self.loc.exists(MANIFEST):
            raise NotFound(f"the basis at {self.url} was deleted while it was read")
        return block

    def load(self, name: str) -> npt.NDArray[np.float32]:
        """V of one layer, (D, k) float32."""
        return self._read(name, slice(None))

    def iter_bytes(
        self, name: str, start: int = 0, stop: int | None = None, block_bytes: int = 1 << 22
    ) -> Iterator[bytes | memoryview]:
        """The layer's C-order float32 bytes in [start, stop): a stored chunk at a time, straight
        from its object where the chunks are plain bytes + crc32c (as this module writes them),
        else decoded by zarr `block_bytes` at a time."""
        info = self.layer(name)
        stop = info.nbytes if stop is None else stop
        if not 0 <= start <= stop <= info.nbytes:
            raise InvalidInput(
                f"byte range [{start}, {stop}) is outside layer {name!r} of {info.nbytes} bytes"
            )
        arr = self._array(name)
        if plain_chunks(arr):
            yield from iter_layer_bytes(
                self.loc, name, arr, start, stop, lambda: self.loc.exists(MANIFEST)
            )
            return
        row_bytes = 4 * info.rank
        rows_per_block = max(
            info.chunk_rows, block_bytes // row_bytes // info.chunk_rows * info.chunk_rows
        )
        pos = start
        while pos < stop:
            r0 = pos // row_bytes
            r1 = min(info.rows, (r0 // info.chunk_rows) * info.chunk_rows + rows_per_block)
            block = self._read(name, slice(r0, r1))
            raw = block.data.cast("B")
            lo = pos - r0 * row_bytes
            hi = min(len(raw), stop - r0 * row_bytes)
            yield bytes(raw[lo:hi])
            pos = r0 * row_bytes + hi

    def verify(self) -> list[str]:
        problems = []
        for name, info in self.layers.items():
            try:
                sha = layer_sha256(self.loc, name, info.chunk_rows)
            except Exception as exc:  # noqa: BLE001 - any read failure is a finding
                problems.append(f"{name}: unreadable ({exc})")
                continue
            if sha != info.sha256:
                problems.append(f"{name}: sha256 mismatch")
        return problems

    def summary(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "url": self.url,
            "kind": m.get("kind"),
            "mode": m.get("mode"),
            "scope": m.get("scope"),
            "layers": [
                {
                    "name": i.name,
                    "shape": [i.rows, i.rank],
                    "sha256": i.sha256,
                    "energy_captured": float(sum(i.energy)),
                    "singular_values": i.singular_values,
                }
                for i in self.layers.values()
            ],
        }
