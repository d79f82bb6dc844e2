"""Committing an upload row: once every group is covered by staged parts, stream them into
`TrajectoryStore.write_row_blocks` (a row is never held whole in memory) and drop them."""

from __future__ import annotations

import numpy as np
from sqlalchemy.orm import Session

from services.context import Registry
from services.models import Task, Trajectory, utcnow
from services.trajectories.records import check_upload_target, open_store, task_layout
from services.trajectories.staging import drop_row, part_name, row_dir, staged_parts
from storage.errors import Conflict, InvalidInput, NotFound
from storage.objects import Location


def commit_row(
    reg: Registry,
    session: Session,
    task: Task,
    traj: Trajectory,
    row: int,
    *,
    step: int | None,
    epoch: float | None,
    metrics: dict[str, float],
) -> dict:
    """Commit staged row `row` once every group is complete. Returns the row's info."""
    check_upload_target(traj)
    layout = task_layout(task)
    with reg.locks(("trajectory", task.id)):
        store = open_store(reg, traj, read_only=False)
        if row < store.num_rows:
            drop_row(reg, task.id, row)
            return store.row(row).to_dict()
        if row != store.num_rows:
            raise InvalidInput(f"row {row} cannot be committed before row {store.num_rows}")
        staged = staged_parts(reg, task.id, row).get(row, {})
        missing = {}
        for g in layout.groups:
            covered, pos = staged.get(g.name, []), 0
            for a, b in covered:
                if a != pos:
                    break
                pos = b
            if pos != g.size:
                missing[g.name] = {"have": covered, "size": g.size}
        if missing:
            raise Conflict(
                f"row {row} is incomplete in groups {sorted(missing)}; send their parts first",
                detail=missing,
            )
        # Streamed from the staged parts block by block: a group may hold 2^33 values.
        read = _staged_reader(reg.staging(task.id), row, staged)
        store.write_row_blocks(row, read, step=step, epoch=epoch, metrics=metrics)
        drop_row(reg, task.id, row)
        traj.rows = store.num_rows
        traj.updated_at = utcnow()
        session.commit()
        return store.row(row).to_dict()


def _staged_reader(loc: Location, row: int, staged: dict[str, list[tuple[int, int]]]):
    """read(group, start, stop) -> float32 values [start, stop) of staged row `row`, read from
    the parts (which cover each group) that overlap the range, never more than it."""

    def read(group: str, start: int, stop: int) -> np.ndarray:
        out = np.empty(stop - start, dtype=np.float32)  # (stop - start,)
        for a, b in staged[group]:
            lo, hi = max(a, start), min(b, stop)
            if lo >= hi:
                continue
            parts = (row_dir(row), group, part_name(a, b))
            try:
                with loc.fs.open(loc.path(*parts), "rb") as f:
                    f.seek(4 * (lo - a))
                    data = f.read(4 * (hi - lo))
            except FileNotFoundError as exc:
                raise NotFound(f"{loc.path(*parts)} does not exist") from exc
            if len(data) != 4 * (hi - lo):
                raise NotFound(f"staged part {'/'.join(parts)} is shorter than its name says")
            out[lo - start : hi - start] = np.frombuffer(data, "<f4")
        return out

    return read
