"""Sending rows: each group in parts of raw float32, then a commit; committed rows are skipped
after comparing their sha256 (nothing of a row that differs is sent).

Every request here is idempotent (a part sent twice with the same bytes is staged once, a
committed row commits again as itself), so each is retried on its own: a dropped connection
costs one part. An upload that stopped (retries spent, the process killed) resumes from the
last acknowledged part: the registry lists a staged row's parts with their sha256, and only the
parts it does not hold with our bytes are sent.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from client.retry import RetriesExhausted
from client.sources import SourceRow
from client.transport import Requester
from storage.arrays import check_row, digest, encode
from storage.errors import Conflict, NotFound
from storage.layout import Layout

Part = tuple[str, int, int, str]  # (group, offset, count, sha256)


def send_rows(
    client: Requester,
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
    staged = {int(r) for r in status.get("staged") or {}}
    step_values = max(1, part_bytes // 4)
    row_bytes = 4 * layout.total_size
    where = {"row": len(committed), "group": None, "offset": 0}
    try:
        for row in rows:
            vectors = check_row(row.vectors, layout)
            if row.index < len(committed):
                ours = {g: digest(encode(v, store_dtype)) for g, v in vectors.items()}
                if ours != committed[row.index]:
                    raise Conflict(f"row {row.index} of {task_id!r} is committed with other values")
                bar(row_bytes)
                continue
            where.update(row=row.index, group=None, offset=0)
            resume = row.index in staged
            staged.discard(row.index)
            _send_row(client, task_id, row, vectors, layout, resume, step_values, where, bar)
        # Rows staged by an earlier upload that this one did not reach.
        for leftover in sorted(staged):
            client.request("DELETE", f"/v1/tasks/{task_id}/trajectory/rows/{leftover}")
    except RetriesExhausted as exc:
        at = f"row {where['row']}"
        if where["group"] is not None:
            at += f", group {where['group']!r} at value {where['offset']:,}"
        exc.add_hint(
            f"rows before {where['row']} are committed and the parts of {at} that the "
            "registry acknowledged are kept: run the same upload again to resume there"
        )
        raise


def _send_row(
    client: Requester,
    task_id: str,
    row: SourceRow,
    vectors: dict,
    layout: Layout,
    resume: bool,
    step_values: int,
    where: dict,
    bar: Callable[[int], None],
) -> None:
    """Send one uncommitted row: its parts (with `resume`, a staged row, only those the registry
    does not hold with our bytes), then its commit. `where` tracks the part being sent."""
    base_path = f"/v1/tasks/{task_id}/trajectory/rows/{row.index}"
    held: set[Part] | None = set()
    if resume:
        held = _held_parts(client, task_id, row.index, vectors, step_values)
        if held is None:
            client.request("DELETE", base_path)  # staged with other bytes or cuts
    for group, offset, data in _parts(vectors, layout, step_values):
        where.update(group=group, offset=offset)
        sha = hashlib.sha256(data).hexdigest()
        if held and (group, offset, len(data) // 4, sha) in held:
            bar(len(data))
            continue
        client.request(
            "PUT",
            f"{base_path}/groups/{group}",
            params={"offset": offset},
            content=data,
            headers={"Content-Type": "application/octet-stream", "X-Tinysub-Sha256": sha},
        )
        bar(len(data))
    where.update(group=None)
    client.request_json(
        "POST",
        f"{base_path}/commit",
        json={"step": row.step, "epoch": row.epoch, "metrics": row.metrics},
        idempotent=True,  # a committed row commits again as itself
    )


def _parts(vectors: dict, layout: Layout, step_values: int) -> Iterator[tuple[str, int, bytes]]:
    """(group, offset, raw little-endian float32 bytes) of each part of a row, in order."""
    for group in layout.groups:
        vec = np.ascontiguousarray(vectors[group.name], dtype="<f4")  # (D_g,)
        for a in range(0, group.size, step_values):
            yield group.name, a, vec[a : a + step_values].tobytes()


def _held_parts(
    client: Requester, task_id: str, row: int, vectors: dict, step_values: int
) -> set[Part] | None:
    """The parts of `row` the registry holds with exactly our bytes, cut where ours are cut;
    None when it holds any part that is not one of ours (the row must be dropped first)."""
    try:
        staged = client.request_json("GET", f"/v1/tasks/{task_id}/trajectory/rows/{row}/parts")
    except NotFound:  # a registry from before this route: resend the row whole
        return None
    held: set[Part] = set()
    for group, parts in staged["groups"].items():
        vec = vectors.get(group)
        for p in parts:
            offset, count = int(p["offset"]), int(p["count"])
            if vec is None or offset % step_values or count != min(step_values, vec.size - offset):
                return None
            ours = np.ascontiguousarray(vec[offset : offset + count], dtype="<f4").tobytes()
            if hashlib.sha256(ours).hexdigest() != p["sha256"]:
                return None
            held.add((group, offset, count, p["sha256"]))
    return held
