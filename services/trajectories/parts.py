"""Receiving one part of an upload row: check it (bounds, sha256, finite values) and stage it,
or compare it with the committed row it belongs to.

Re-sending a part is idempotent: equal bytes are accepted, different bytes are a `Conflict`.
"""

from __future__ import annotations

import numpy as np
from sqlalchemy.orm import Session

from services.context import Registry
from services.models import Task, Trajectory
from services.streaming import SpooledBody
from services.trajectories.records import (
    check_upload_target,
    get_task,
    get_trajectory,
    open_store,
    task_layout,
)
from services.trajectories.staging import (
    BLOCK_BYTES,
    part_name,
    row_dir,
    same_as_staged,
    stage,
    staged_parts,
)
from storage.arrays import encode
from storage.errors import Conflict, InvalidInput
from storage.objects import Location
from storage.trajectory import TrajectoryStore

# Rows may be staged a little ahead of the committed ones (parallel uploads), not arbitrarily
# far: a bogus row number must not be able to fill the disk.
MAX_ROWS_AHEAD = 16


def part_target(session: Session, task_id: str, group: str) -> tuple[Task, Trajectory]:
    """The task and upload trajectory a part of `group` goes to: what can be refused before
    the part's body is read."""
    task = get_task(session, task_id)
    traj = get_trajectory(session, task_id)
    check_upload_target(traj)
    task_layout(task).group(group)  # unknown group -> LayoutMismatch
    return task, traj


def put_part(
    reg: Registry,
    task: Task,
    traj: Trajectory,
    row: int,
    group: str,
    offset: int,
    part: SpooledBody,
    sha256: str | None = None,
) -> dict:
    """Validate and stage one spooled part; returns {row, group, offset, count, status}."""
    check_upload_target(traj)
    size = task_layout(task).group(group).size  # unknown group: refused before any path
    count = _check_part(part, group, offset, size, sha256)
    result = {"row": row, "group": group, "offset": offset, "count": count}

    loc = reg.staging(task.id)
    with reg.locks(("stage", task.id, row)):
        # The row count is read under the row's stage lock: commit_row drops a row's parts
        # under this lock after writing the row, so a count read here cannot go stale before
        # the part is staged (a count read before the lock could: the part would be staged
        # for a row just committed with other values).
        store = open_store(reg, traj)
        if row < store.num_rows:
            _check_committed(store, row, group, offset, part)
            return {**result, "status": "committed"}
        if row >= store.num_rows + MAX_ROWS_AHEAD:
            raise InvalidInput(
                f"row {row} is too far ahead: the store has {store.num_rows} rows; "
                f"stage rows below {store.num_rows + MAX_ROWS_AHEAD}"
            )
        spans = staged_parts(reg, task.id, row).get(row, {}).get(group, [])
        if _stage_new(loc, part, spans, row, group, offset, count) and _unstage_if_committed(
            reg, traj, loc, row, group, offset, part
        ):
            return {**result, "status": "committed"}
    return {**result, "status": "staged"}


def _stage_new(
    loc: Location,
    part: SpooledBody,
    spans: list[tuple[int, int]],
    row: int,
    group: str,
    offset: int,
    count: int,
) -> bool:
    """Stage a part unless the same one is in `spans` (the group's staged parts); True when it
    was written now. The caller holds the row's stage lock."""
    name = part_name(offset, offset + count)
    if (offset, offset + count) in spans:
        if not same_as_staged(loc, part, row_dir(row), group, name):
            raise Conflict(
                f"row {row} {group!r} [{offset}, {offset + count}) was staged "
                "with other values; drop the row to start it again"
            )
        return False
    for a, b in spans:
        if a < offset + count and offset < b:
            raise Conflict(
                f"part [{offset}, {offset + count}) overlaps staged part [{a}, {b}) of "
                f"row {row} {group!r}; send the same parts again or drop the row"
            )
    stage(loc, part, row_dir(row), group, name)
    return True


def _unstage_if_committed(
    reg: Registry,
    traj: Trajectory,
    loc: Location,
    row: int,
    group: str,
    offset: int,
    part: SpooledBody,
) -> bool:
    """After staging, look at the row count once more. The stage lock is per process: another
    server may have committed the row (and dropped its parts) between this one's check and its
    write. A part staged after that would linger for a committed row, so it is removed and the
    part is answered as for a committed row (Conflict unless it equals the stored values).
    True when the row turned out committed."""
    store = open_store(reg, traj)
    if row >= store.num_rows:
        return False
    loc.delete(row_dir(row), recursive=True)  # only leftovers: the row is committed
    _check_committed(store, row, group, offset, part)
    return True


def _check_part(part: SpooledBody, group: str, offset: int, size: int, sha256: str | None) -> int:
    """The number of values in a part, once its size, bounds, sha256 and values are checked."""
    if part.nbytes == 0 or part.nbytes % 4:
        raise InvalidInput(
            f"a part is raw float32 values: {part.nbytes} bytes is not a multiple of 4"
        )
    count = part.nbytes // 4
    if offset < 0 or offset + count > size:
        raise InvalidInput(
            f"values [{offset}, {offset + count}) are outside group {group!r} of size {size}"
        )
    if sha256 is not None and part.sha256 != sha256.lower():
        raise InvalidInput("the part's sha256 does not match its bytes (corrupted in transit)")
    bad = sum(
        int(np.count_nonzero(~np.isfinite(np.frombuffer(b, "<f4"))))
        for b in part.blocks(BLOCK_BYTES)
    )
    if bad:
        raise InvalidInput(f"group {group!r} part has {bad} NaN or Inf values; nothing was written")
    return count


def _check_committed(
    store: TrajectoryStore, row: int, group: str, offset: int, part: SpooledBody
) -> None:
    """Conflict unless the part equals committed row `row` (as stored: in the store's dtype)."""
    start = offset
    for block in part.blocks(BLOCK_BYTES):
        values = np.frombuffer(block, "<f4")
        stored = store.read_block(group, start, start + values.size, rows=[row])[0]
        if encode(values, store.dtype).tobytes() != encode(stored, store.dtype).tobytes():
            raise Conflict(f"row {row} is committed with other values in {group!r}")
        start += values.size
