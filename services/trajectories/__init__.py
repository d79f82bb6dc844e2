"""Trajectories in the registry: register an existing store, or receive rows over HTTP.

An upload sends each row as parts, `(row, group, offset)` -> raw little-endian float32 values.
A part arrives spooled to a temporary file (services.streaming) and is read from it in blocks:
no part is ever held whole in memory. Parts are validated (bounds, finite values) and staged
under `<root>/uploads/<task>/<row>/`;
`commit_row` writes the row only when every group is fully covered, streaming the parts into
`TrajectoryStore.write_row_blocks` block by block (a row is never held whole in memory), which
commits it atomically. Re-sending a part or a whole row is
idempotent: equal bytes are accepted, different bytes are refused with `Conflict`. A crash at any
point leaves either staged parts (resumed by sending the rest) or a committed row.

Modules: `records` (the registry's record of a task's trajectory and its store), `staging`
(staged parts on disk), `parts` (receiving one part), `commit` (committing a staged row).
"""

from services.trajectories.commit import commit_row
from services.trajectories.parts import MAX_ROWS_AHEAD, part_target, put_part
from services.trajectories.records import (
    STORE_FILES,
    _options,
    check_store_names,
    check_upload_target,
    create_or_register,
    get_task,
    get_trajectory,
    open_store,
    refresh_rows,
    task_layout,
)
from services.trajectories.staging import BLOCK_BYTES, drop_row, staged_digests, staged_parts

__all__ = [
    "BLOCK_BYTES",
    "MAX_ROWS_AHEAD",
    "STORE_FILES",
    "_options",
    "check_store_names",
    "check_upload_target",
    "commit_row",
    "create_or_register",
    "drop_row",
    "get_task",
    "get_trajectory",
    "open_store",
    "part_target",
    "put_part",
    "refresh_rows",
    "staged_digests",
    "staged_parts",
    "task_layout",
]
