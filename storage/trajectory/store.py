"""`TrajectoryStore`: open, create or probe a store; its writing and reading come from
storage.trajectory.writing and storage.trajectory.reading."""

from __future__ import annotations

import os
from typing import Any

from storage.layout import Layout
from storage.objects import Location
from storage.trajectory.manifest import (
    DEFAULT_CAPACITY,
    DEFAULT_CHUNK_COLS,
    MANIFEST,
    create_store,
    read_manifest,
)
from storage.trajectory.reading import RowReader
from storage.trajectory.writing import RowWriter


class TrajectoryStore(RowWriter, RowReader):
    """Checkpoint rows of one task, grouped per layer. Open with `create()` or `open()`."""

    @classmethod
    def create(
        cls,
        url: str | os.PathLike[str],
        layout: Layout,
        *,
        model_name: str = "",
        revision: str | None = None,
        dtype: str = "float32",
        chunk_cols: int = DEFAULT_CHUNK_COLS,
        capacity: int = DEFAULT_CAPACITY,
        storage_options: dict[str, Any] | None = None,
        overwrite: bool = False,
        attrs: dict[str, Any] | None = None,
    ) -> TrajectoryStore:
        loc = Location.from_url(url, storage_options)
        manifest = create_store(
            loc,
            layout,
            model_name=model_name,
            revision=revision,
            dtype=dtype,
            chunk_cols=chunk_cols,
            capacity=capacity,
            overwrite=overwrite,
            attrs=attrs,
        )
        return cls(loc, manifest, read_only=False)

    @classmethod
    def open(
        cls,
        url: str | os.PathLike[str],
        *,
        read_only: bool = True,
        storage_options: dict[str, Any] | None = None,
    ) -> TrajectoryStore:
        loc = Location.from_url(url, storage_options)
        return cls(loc, read_manifest(loc), read_only=read_only)

    @classmethod
    def exists(
        cls, url: str | os.PathLike[str], storage_options: dict[str, Any] | None = None
    ) -> bool:
        return Location.from_url(url, storage_options).exists(MANIFEST)

    def summary(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "model_name": self.model_name,
            "revision": self.revision,
            "dtype": self.dtype,
            "rows": self.num_rows,
            "layout_hash": self.layout.hash,
            "rule": self.layout.rule,
            "groups": [
                {"name": g.name, "size": g.size, "params": len(g.params)}
                for g in self.layout.groups
            ],
            "bytes": self.nbytes(),
        }
