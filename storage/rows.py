"""One checkpoint row of a trajectory store: its commit marker and its validation/encoding.

A row is committed by writing `_rows/<index>.json` (a `RowInfo`: step, epoch, metrics and the
sha256 of each group's stored bytes) after all its chunks; `encode_row` is every check a write
makes, so ingesters can validate a whole input before writing anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy.typing as npt

from storage.arrays import check_row, digest, encode
from storage.layout import Layout

ROWS_DIR = "_rows"


@dataclass(frozen=True)
class RowInfo:
    index: int
    step: int | None = None
    epoch: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    sha256: dict[str, str] = field(default_factory=dict)
    written_at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "step": self.step,
            "epoch": self.epoch,
            "metrics": self.metrics,
            "sha256": self.sha256,
            "written_at": self.written_at,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RowInfo:
        return cls(
            index=int(d["index"]),
            step=d.get("step"),
            epoch=d.get("epoch"),
            metrics=dict(d.get("metrics") or {}),
            sha256=dict(d.get("sha256") or {}),
            written_at=float(d.get("written_at") or 0.0),
        )


def encode_row(
    vectors: Mapping[str, Any], layout: Layout, dtype: str
) -> tuple[dict[str, npt.NDArray[Any]], dict[str, str]]:
    """Validate one row and encode it for storage: (group -> stored array, group -> sha256).

    This is every check a write makes (groups, sizes, finite values, dtype range), so an
    ingester can validate a whole input with it before it writes anything.
    """
    rows = check_row(vectors, layout)
    encoded = {g: encode(v, dtype) for g, v in rows.items()}
    return encoded, {g: digest(e) for g, e in encoded.items()}


def row_key(index: int) -> str:
    return f"{index:08d}.json"
