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
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import uuid

import numpy as np
from sqlalchemy.orm import Session

from services.context import Registry
from services.models import Task, Trajectory, utcnow
from services.security import confine_url, is_under
from services.streaming import SpooledBody
from storage.arrays import encode
from storage.basis import MANIFEST as BASIS_MANIFEST
from storage.errors import (
    Conflict,
    InvalidInput,
    LayoutMismatch,
    NotFound,
    ReadOnly,
    storage_error,
)
from storage.layout import Layout
from storage.objects import Location
from storage.rows import ROWS_DIR
from storage.trajectory import DEFAULT_CHUNK_COLS, TrajectoryStore
from storage.trajectory import MANIFEST as TRAJECTORY_MANIFEST

# Rows may be staged a little ahead of the committed ones (parallel uploads), not arbitrarily
# far: a bogus row number must not be able to fill the disk.
MAX_ROWS_AHEAD = 16
_PART = re.compile(r"^(\d{12})-(\d{12})$")
# Groups are directories at the root of trajectory and basis stores, next to these files: a
# group of one of these names would overwrite one (compared without case: some disks ignore it).
STORE_FILES = frozenset(
    n.lower() for n in ("zarr.json", TRAJECTORY_MANIFEST, BASIS_MANIFEST, ROWS_DIR)
)
BLOCK_BYTES = 1 << 20  # a spooled part is read in blocks of this many bytes (whole float32s)


def get_task(session: Session, task_id: str) -> Task:
    task = session.get(Task, task_id)
    if task is None:
        raise NotFound(f"no task {task_id!r}")
    return task


def get_trajectory(session: Session, task_id: str) -> Trajectory:
    traj = session.get(Trajectory, task_id)
    if traj is None:
        raise NotFound(f"task {task_id!r} has no trajectory; register or upload one")
    return traj


def task_layout(task: Task) -> Layout:
    return Layout.from_dict(task.layout)


def check_store_names(layout: Layout) -> None:
    """Refuse group names that are also the names of a store's own files."""
    clash = sorted(g.name for g in layout.groups if g.name.lower() in STORE_FILES)
    if clash:
        raise InvalidInput(
            f"parameter group names {clash} are file names of tinysub stores; rename the groups",
            detail={"reserved": sorted(STORE_FILES)},
        )


def create_or_register(
    reg: Registry,
    session: Session,
    task: Task,
    *,
    url: str | None,
    dtype: str = "float32",
    chunk_cols: int = DEFAULT_CHUNK_COLS,
) -> Trajectory:
    """Register the store at `url` (checked against the task's layout), or create the task's
    upload store. Idempotent for the same request; a different store is a Conflict."""
    existing = session.get(Trajectory, task.id)
    if url is not None:
        real = confine_url(url, reg.settings)
        if existing is not None:
            if existing.url == real:
                return existing
            raise Conflict(f"task {task.id!r} already has another trajectory ({existing.source})")
        store = TrajectoryStore.open(real, read_only=True, storage_options=_options(reg, real))
        if store.layout.hash != task.layout_hash:
            raise LayoutMismatch(
                f"store layout {store.layout.hash[:12]} does not match task {task.id!r} "
                f"({task.layout_hash[:12]})"
            )
        traj = Trajectory(
            task_id=task.id, url=real, source="registered", dtype=store.dtype, rows=store.num_rows
        )
    else:
        target = reg.trajectory_url(task.id)
        if existing is not None:
            if existing.source == "upload":
                return existing
            raise Conflict(f"task {task.id!r} has a registered trajectory; it takes no uploads")
        check_store_names(task_layout(task))  # tasks stored before names were checked
        opts = reg.settings.storage_options
        if TrajectoryStore.exists(target, opts):
            # Created by an earlier request that died before the database commit.
            store = TrajectoryStore.open(target, read_only=True, storage_options=opts)
            if store.layout.hash != task.layout_hash:
                raise Conflict(f"the upload store of task {task.id!r} has another layout")
        else:
            store = TrajectoryStore.create(
                target,
                task_layout(task),
                model_name=task.model,
                revision=task.revision,
                dtype=dtype,
                chunk_cols=chunk_cols,
                storage_options=opts,
            )
        traj = Trajectory(
            task_id=task.id, url=store.url, source="upload", dtype=store.dtype, rows=store.num_rows
        )
    session.add(traj)
    session.flush()
    return traj


def _options(reg: Registry, url: str) -> dict:
    # The store root's fsspec options (its credentials) apply to URLs under it, compared on
    # whole segments: 's3://b/root-sibling/x' shares a string prefix but not the root.
    root = reg.settings.resolved_store_root
    return reg.settings.storage_options if is_under(url, root) else {}


def open_store(reg: Registry, traj: Trajectory, *, read_only: bool = True) -> TrajectoryStore:
    return TrajectoryStore.open(
        traj.url, read_only=read_only, storage_options=_options(reg, traj.url)
    )


# --------------------------------------------------------------------------------- staging
def _row_dir(row: int) -> str:
    return f"{row:08d}"


def _part_name(start: int, stop: int) -> str:
    return f"{start:012d}-{stop:012d}"


def staged_parts(reg: Registry, task_id: str, row: int | None = None) -> dict:
    """{row: {group: [(start, stop), ...]}} of the parts received and not yet committed."""
    loc = reg.staging(task_id)
    rows = [_row_dir(row)] if row is not None else loc.list()
    out: dict[int, dict[str, list[tuple[int, int]]]] = {}
    for r in rows:
        if not r.isdigit():
            continue
        groups = {}
        for g in loc.list(r):
            spans = []
            for name in loc.list(r, g):
                m = _PART.fullmatch(name)
                if m:
                    spans.append((int(m.group(1)), int(m.group(2))))
            if spans:
                groups[g] = sorted(spans)
        if groups:
            out[int(r)] = groups
    return out


def staged_digests(reg: Registry, task_id: str, row: int) -> dict[str, list[dict]]:
    """{group: [{offset, count, sha256}, ...]} of row `row`'s staged parts: what an
    interrupted upload resumes from, sending only the parts that are not staged with its bytes.
    Reads every staged byte of the row once (a part dropped meanwhile is left out)."""
    loc, name = reg.staging(task_id), _row_dir(row)
    out: dict[str, list[dict]] = {}
    for group, spans in staged_parts(reg, task_id, row).get(row, {}).items():
        for start, stop in spans:
            h = hashlib.sha256()
            try:
                with loc.fs.open(loc.path(name, group, _part_name(start, stop)), "rb") as f:
                    for block in iter(lambda f=f: f.read(BLOCK_BYTES), b""):
                        h.update(block)
            except FileNotFoundError:
                continue
            part = {"offset": start, "count": stop - start, "sha256": h.hexdigest()}
            out.setdefault(group, []).append(part)
    return out


def _check_upload_target(traj: Trajectory) -> None:
    if traj.source != "upload":
        raise ReadOnly(
            f"the trajectory of task {traj.task_id!r} is a registered store; "
            "the registry does not write into it: append to it directly"
        )


def part_target(session: Session, task_id: str, group: str) -> tuple[Task, Trajectory]:
    """The task and upload trajectory a part of `group` goes to: what can be refused before
    the part's body is read."""
    task = get_task(session, task_id)
    traj = get_trajectory(session, task_id)
    _check_upload_target(traj)
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
    _check_upload_target(traj)
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
    name = _part_name(offset, offset + count)
    if (offset, offset + count) in spans:
        if not _same_as_staged(loc, part, _row_dir(row), group, name):
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
    _stage(loc, part, _row_dir(row), group, name)
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
    loc.delete(_row_dir(row), recursive=True)  # only leftovers: the row is committed
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


def _same_as_staged(loc: Location, part: SpooledBody, *parts: str) -> bool:
    try:
        with loc.fs.open(loc.path(*parts), "rb") as staged:
            same = all(staged.read(len(b)) == b for b in part.blocks(BLOCK_BYTES))
            return same and staged.read(1) == b""
    except FileNotFoundError as exc:
        raise NotFound(f"staged part {'/'.join(parts)} disappeared; send it again") from exc


def _stage(loc: Location, part: SpooledBody, *parts: str) -> None:
    """Copy a spooled part into staging; the part appears whole or not at all."""
    try:
        if loc.is_local:
            _stage_local(part, loc.path(*parts))
        else:
            # The backend's own upload of a local file: one all-or-nothing object (S3, GCS...).
            loc.fs.put_file(part.path, loc.path(*parts))
    except OSError as exc:
        raise storage_error(f"could not stage part {'/'.join(parts)}", exc) from exc


def _stage_local(part: SpooledBody, target: str) -> None:
    # Written beside the target, synced and renamed over it: a crash leaves a whole part or a
    # `.tmp-` file that staged_parts does not list (the row's drop removes it). A rename lost
    # to a power cut only means the part is sent again: staged parts are a resumable cache.
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = f"{target}.tmp-{uuid.uuid4().hex}"
    try:
        with open(tmp, "wb") as f:
            for block in part.blocks(BLOCK_BYTES):
                f.write(block)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(os.path.dirname(target))


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def drop_row(reg: Registry, task_id: str, row: int) -> None:
    with reg.locks(("stage", task_id, row)):
        reg.staging(task_id).delete(_row_dir(row), recursive=True)


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
    _check_upload_target(traj)
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
            parts = (_row_dir(row), group, _part_name(a, b))
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


def refresh_rows(reg: Registry, session: Session, traj: Trajectory) -> TrajectoryStore:
    """Open the store and record its committed row count (registered stores grow outside us)."""
    store = open_store(reg, traj)
    if traj.rows != store.num_rows:
        traj.rows = store.num_rows
        traj.updated_at = utcnow()
        session.commit()
    return store
