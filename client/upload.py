"""Sending rows: each group in parts of raw float32, then a commit; committed rows are skipped
after comparing their sha256 (nothing of a row that differs is sent)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import numpy as np

from client.sources import SourceRow
from storage.arrays import check_row, digest, encode
from storage.errors import Conflict
from storage.layout import Layout

if TYPE_CHECKING:
    from client.client import Client


def send_rows(
    client: Client,
    task_id: str,
    rows: Iterable[SourceRow],
    layout: Layout,
    status: dict,
    part_bytes: int,
    bar: Callable[[int], None],
) -> None:
    """Upload `rows` given the server's trajectory `status` (committed sha256s, staged rows)."""
    committed = status["row_sha256"]
    store_dtype = status["dtype"]
    # Parts staged by an interrupted upload may be cut at other offsets than ours: drop them and
    # send those rows whole (at most a few rows are ever staged).
    for staged_row in status.get("staged") or {}:
        client._request("DELETE", f"/v1/tasks/{task_id}/trajectory/rows/{int(staged_row)}")
    step_values = max(1, part_bytes // 4)
    row_bytes = 4 * layout.total_size
    for row in rows:
        vectors = check_row(row.vectors, layout)
        if row.index < len(committed):
            ours = {g: digest(encode(v, store_dtype)) for g, v in vectors.items()}
            if ours != committed[row.index]:
                raise Conflict(f"row {row.index} of {task_id!r} is committed with other values")
            bar(row_bytes)
            continue
        base_path = f"/v1/tasks/{task_id}/trajectory/rows/{row.index}"
        for group in layout.groups:
            vec = np.ascontiguousarray(vectors[group.name], dtype="<f4")  # (D_g,)
            for a in range(0, group.size, step_values):
                data = vec[a : a + step_values].tobytes()
                client._request(
                    "PUT",
                    f"{base_path}/groups/{group.name}",
                    params={"offset": a},
                    content=data,
                    headers={
                        "Content-Type": "application/octet-stream",
                        "X-Tinysub-Sha256": hashlib.sha256(data).hexdigest(),
                    },
                )
                bar(len(data))
        client._json(
            "POST",
            f"{base_path}/commit",
            json={"step": row.step, "epoch": row.epoch, "metrics": row.metrics},
        )
