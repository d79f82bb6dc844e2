"""Bases in the registry: ordering (version + job), resolving versions and aliases, manifests.

A basis is (task, kind, version). Its parameters are validated when it is ordered, so a bad order
gets a 4xx and creates nothing; the job then computes it (services.jobs). Kinds:
- task / global: the task's own trajectory (global = one whole-encoder subspace, sliced per layer);
- unified: the checkpoints of a set of tasks (the ordering task is always in the set);
- zeroshot: the unified set without the ordering task, whose rows are never read;
- random: a seeded random orthonormal basis with the layout's shapes (needs no trajectory).
"""

from __future__ import annotations

import uuid

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.basis_params import BasisParams
from services.compute import BasisSpec
from services.context import Registry
from services.models import Alias, Basis, Job, Task, utcnow
from services.schemas import BasisCreate
from services.security import check_slug
from services.trajectories import _options, get_task, get_trajectory, open_store, task_layout
from storage.errors import Conflict, InvalidInput, LayoutMismatch, NotFound, NotReady
from storage.vocabulary import BASIS_ACTIVE, BasisKind, BasisScope, BasisStatus, JobKind, JobStatus

LATEST = "latest"
MULTI_TASK = (BasisKind.UNIFIED, BasisKind.ZEROSHOT)
OWN_TRAJECTORY = (BasisKind.TASK, BasisKind.GLOBAL)


def layer_path(task_id: str, kind: str, version: int, layer: str) -> str:
    return f"/v1/tasks/{task_id}/bases/{kind}/versions/{version}/layers/{layer}"


def source_tasks(task_id: str, kind: BasisKind, tasks: list[str] | None) -> list[str]:
    """The tasks whose trajectories a basis reads, in order (their order fixes the rows')."""
    if kind in OWN_TRAJECTORY:
        return [task_id]
    if kind == BasisKind.RANDOM:
        return []
    if not tasks:
        raise InvalidInput(f"a {kind} basis needs `tasks`, the set of tasks it spans")
    wanted = list(dict.fromkeys(tasks))
    if kind == BasisKind.UNIFIED:
        if task_id not in wanted:
            wanted.insert(0, task_id)
        if len(wanted) < 2:
            raise InvalidInput("a unified basis spans at least two tasks")
        return wanted
    others = [t for t in wanted if t != task_id]
    if not others:
        raise InvalidInput(f"a zeroshot basis for {task_id!r} needs at least one other task")
    return others


def validate_order(reg: Registry, session: Session, task: Task, body: BasisCreate) -> BasisParams:
    """Check an order against what is stored; return the parameters the job will use."""
    from worker.svd.engine import select_rows  # noqa: PLC0415 - kernels import torch; serving must not

    kind = body.kind
    if body.executor not in (None, "local", reg.settings.executor):
        raise InvalidInput(
            f"executor {body.executor!r} is not configured here; use 'local' or "
            f"{reg.settings.executor!r}"
        )
    layout = task_layout(task)
    values = body.rank * sum(g.size for g in layout.groups)
    if values > reg.settings.max_basis_values:
        raise InvalidInput(
            f"a rank-{body.rank} basis of this layout holds {values:,} values, over this "
            f"registry's limit of {reg.settings.max_basis_values:,} (max_basis_values); "
            "ask for a smaller rank"
        )
    params = BasisParams(
        rank=body.rank,
        mode=body.mode,
        scope=BasisScope.GLOBAL if kind == BasisKind.GLOBAL else BasisScope.LAYER,
        executor=body.executor or reg.settings.executor,
        uid=uuid.uuid4().hex,
    )
    if kind == BasisKind.RANDOM:
        small = min(layout.groups, key=lambda g: g.size)
        if body.rank > small.size:
            raise InvalidInput(
                f"rank {body.rank} exceeds group {small.name!r} of size {small.size}; "
                f"use rank <= {small.size}"
            )
        return params.with_changes(seed=body.seed, mode=None, scope=None)
    selection = body.selection
    if selection is None:
        selection = "last" if kind in MULTI_TASK else "all"
    tasks = source_tasks(task.id, kind, body.tasks)
    rows = 0
    for tid in tasks:
        check_slug(tid, "task id")
        other = get_task(session, tid)
        if other.layout_hash != task.layout_hash:
            raise LayoutMismatch(
                f"task {tid!r} has layout {other.layout_hash[:12]} but {task.id!r} has "
                f"{task.layout_hash[:12]}: a basis needs one model layout"
            )
        store = open_store(reg, get_trajectory(session, tid))
        rows += len(select_rows(store, selection, body.mode))
    if body.rank > rows:
        raise InvalidInput(
            f"the selected checkpoints give {rows} rows but rank {body.rank} was asked for; "
            f"use rank <= {rows}"
        )
    params = params.with_changes(selection=selection, tasks=tasks)
    if kind == BasisKind.ZEROSHOT:
        params = params.with_changes(held_out=task.id)
    return params


def next_version(session: Session, task_id: str, kind: str) -> int:
    top = session.scalar(
        select(func.max(Basis.version)).where(Basis.task_id == task_id, Basis.kind == kind)
    )
    return (top or 0) + 1


def create_basis_job(
    reg: Registry,
    session: Session,
    task_id: str,
    kind: BasisKind,
    params: BasisParams,
    *,
    token_id: int | None = None,
) -> tuple[Basis, Job]:
    """A new version of (task, kind) in `pending`, and its job, ordered by `token_id` (which
    the caller checked against its cap: services.quotas). The caller commits."""
    version = next_version(session, task_id, kind)
    basis = Basis(
        task_id=task_id,
        kind=kind,
        version=version,
        status=BasisStatus.PENDING,
        params=params.with_changes(uid=params.uid or uuid.uuid4().hex).to_json(),
        url=reg.basis_url(task_id, kind, version),
    )
    session.add(basis)
    session.flush()
    job = Job(
        kind=JobKind.BASIS,
        basis_id=basis.id,
        token_id=token_id,
        status=JobStatus.PENDING,
        progress={},
    )
    session.add(job)
    session.flush()
    return basis, job


def get_version(session: Session, task_id: str, kind: str, version: int) -> Basis:
    basis = session.scalars(
        select(Basis).where(Basis.task_id == task_id, Basis.kind == kind, Basis.version == version)
    ).first()
    if basis is None:
        raise NotFound(f"task {task_id!r} has no {kind} basis version {version}")
    return basis


def resolve(
    session: Session, task_id: str, kind: str, version: int | None, alias: str | None
) -> Basis:
    """The basis a version or alias (default `latest`) names."""
    try:
        return _resolve(session, task_id, kind, version, alias)
    except NotFound:
        get_task(session, task_id)  # say "no task" rather than "no basis" when that is why
        raise


def _resolve(
    session: Session, task_id: str, kind: str, version: int | None, alias: str | None
) -> Basis:
    if version is not None and alias not in (None, LATEST):
        raise InvalidInput("give a version or an alias, not both")
    if version is None:
        name = alias or LATEST
        row = session.get(Alias, (task_id, kind, name))
        if row is None:
            if name == LATEST:
                raise NotFound(f"task {task_id!r} has no ready {kind} basis yet")
            raise NotFound(f"task {task_id!r} has no {kind} alias {name!r}")
        version = row.version
    return get_version(session, task_id, kind, version)


def require_ready(basis: Basis) -> Basis:
    if basis.status != BasisStatus.READY:
        raise NotReady(
            f"{basis.kind} basis v{basis.version} of {basis.task_id!r} is {basis.status}; "
            "it is served once ready",
            detail={"status": basis.status, "error": basis.error},
        )
    return basis


def aliases_of(session: Session, basis: Basis) -> list[str]:
    return sorted(
        session.scalars(
            select(Alias.name).where(
                Alias.task_id == basis.task_id,
                Alias.kind == basis.kind,
                Alias.version == basis.version,
            )
        )
    )


def job_of(session: Session, basis: Basis) -> int | None:
    return session.scalar(select(func.max(Job.id)).where(Job.basis_id == basis.id))


def basis_public(session: Session, basis: Basis) -> dict:
    layers = None
    if basis.status == BasisStatus.READY and basis.layers:
        layers = [
            {**info, "url": layer_path(basis.task_id, basis.kind, basis.version, info["name"])}
            for info in basis.layers
        ]
    return {
        "task_id": basis.task_id,
        "kind": basis.kind,
        "version": basis.version,
        "status": basis.status,
        # The stored JSON as it is (an older row's keys too), less the registry's own uid.
        "params": {k: v for k, v in basis.params.items() if k != "uid"},
        "inputs_digest": basis.inputs_digest,
        "error": basis.error,
        "created_at": basis.created_at,
        "ready_at": basis.ready_at,
        "aliases": aliases_of(session, basis),
        "layers": layers,
        "job_id": job_of(session, basis),
    }


def set_alias(session: Session, task_id: str, kind: str, name: str, version: int) -> Alias:
    """Point a user alias at a ready version (one UPDATE or INSERT; the caller commits)."""
    check_slug(name, "alias")
    if name == LATEST:
        raise InvalidInput("`latest` is moved by the registry; choose another alias name")
    basis = get_version(session, task_id, kind, version)
    require_ready(basis)
    row = session.get(Alias, (task_id, kind, name))
    if row is None:
        row = Alias(task_id=task_id, kind=kind, name=name, version=version)
        session.add(row)
    else:
        row.version = version
        row.updated_at = utcnow()
    session.flush()
    return row


def delete_alias(session: Session, task_id: str, kind: str, name: str) -> None:
    if name == LATEST:
        raise InvalidInput("`latest` cannot be deleted")
    row = session.get(Alias, (task_id, kind, name))
    if row is None:
        raise NotFound(f"task {task_id!r} has no {kind} alias {name!r}")
    session.delete(row)


def move_latest(session: Session, basis: Basis) -> None:
    """Point `latest` at `basis` unless a newer version already holds it.

    One conditional UPDATE (... WHERE version < :new), not a read then a write: two servers
    finishing versions at once could otherwise both read the old `latest` and the lower
    version could be written last, moving `latest` backwards. The caller commits.
    """
    if _raise_latest(session, basis):
        return
    if session.get(Alias, (basis.task_id, basis.kind, LATEST)) is not None:
        return  # it holds this version or a newer one
    # No `latest` yet: create it. Another server may create it first (primary key clash);
    # then the conditional UPDATE decides, as above.
    try:
        with session.begin_nested():
            session.add(
                Alias(task_id=basis.task_id, kind=basis.kind, name=LATEST, version=basis.version)
            )
    except IntegrityError:
        _raise_latest(session, basis)


def _raise_latest(session: Session, basis: Basis) -> bool:
    """UPDATE `latest` to basis.version where it is lower; True if a row changed."""
    done = session.execute(
        update(Alias)
        .where(
            Alias.task_id == basis.task_id,
            Alias.kind == basis.kind,
            Alias.name == LATEST,
            Alias.version < basis.version,
        )
        .values(version=basis.version, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return done.rowcount == 1


def check_not_running(session: Session, task_id: str, kind: str) -> None:
    busy = session.scalar(
        select(func.count(Basis.id)).where(
            Basis.task_id == task_id, Basis.kind == kind, Basis.status.in_(BASIS_ACTIVE)
        )
    )
    if busy:
        raise Conflict(f"a {kind} basis of {task_id!r} is already queued or running")


def spec_for(reg: Registry, session: Session, basis: Basis):
    """A session-free snapshot of what computing `basis` needs (services.compute.BasisSpec)."""
    params = BasisParams.from_json(basis.params)
    sources, options = {}, {}
    for tid in params.source_tasks:
        traj = get_trajectory(session, tid)
        sources[tid] = traj.url
        options[tid] = _options(reg, traj.url)
    task = get_task(session, basis.task_id)
    return BasisSpec(
        basis_id=basis.id,
        task_id=basis.task_id,
        kind=BasisKind(basis.kind),
        version=basis.version,
        url=basis.url,
        params=params,
        layout=dict(task.layout),
        sources=sources,
        source_options=options,
        storage_options=reg.settings.storage_options,
    )
