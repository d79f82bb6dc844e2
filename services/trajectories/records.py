"""A task's trajectory record in the registry: look it up, register or create its store, open it.

A trajectory is either a registered store (written by someone else, read only here) or the
task's upload store (written by the registry from staged parts).
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from services.context import Registry
from services.models import Task, Trajectory, utcnow
from services.security import confine_url, is_under
from storage.basis import MANIFEST as BASIS_MANIFEST
from storage.errors import Conflict, InvalidInput, LayoutMismatch, NotFound, ReadOnly
from storage.layout import Layout
from storage.rows import ROWS_DIR
from storage.trajectory import DEFAULT_CHUNK_COLS, TrajectoryStore
from storage.trajectory import MANIFEST as TRAJECTORY_MANIFEST

# Groups are directories at the root of trajectory and basis stores, next to these files: a
# group of one of these names would overwrite one (compared without case: some disks ignore it).
STORE_FILES = frozenset(
    n.lower() for n in ("zarr.json", TRAJECTORY_MANIFEST, BASIS_MANIFEST, ROWS_DIR)
)


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


def check_upload_target(traj: Trajectory) -> None:
    """Refuse to write into a registered store: only the upload store takes rows."""
    if traj.source != "upload":
        raise ReadOnly(
            f"the trajectory of task {traj.task_id!r} is a registered store; "
            "the registry does not write into it: append to it directly"
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


def refresh_rows(reg: Registry, session: Session, traj: Trajectory) -> TrajectoryStore:
    """Open the store and record its committed row count (registered stores grow outside us)."""
    store = open_store(reg, traj)
    if traj.rows != store.num_rows:
        traj.rows = store.num_rows
        traj.updated_at = utcnow()
        session.commit()
    return store
