"""Tasks: a slug ID, the model (name, revision) and the layout its trajectory must have."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response
from sqlalchemy import func, select

from services.deps import Reader, SessionDep, SettingsDep, Writer
from services.models import Task, Trajectory
from services.routes.auth_first import AuthFirstRoute
from services.schemas import TaskCreate, TaskList, TaskPublic
from services.security import SLUG_PATTERN, check_group_name
from services.trajectories import check_store_names, get_task
from storage.errors import Conflict, InvalidInput, TinysubError
from storage.layout import Layout

router = APIRouter(prefix="/tasks", tags=["tasks"], route_class=AuthFirstRoute)
TaskId = Annotated[str, Path(pattern=SLUG_PATTERN, description="A slug: a-z, 0-9, '-', '_'.")]


def task_public(task: Task, rows: int | None) -> dict:
    layout = Layout.from_dict(task.layout)
    return {
        "id": task.id,
        "model": task.model,
        "revision": task.revision,
        "layout_hash": task.layout_hash,
        "rule": layout.rule,
        "groups": [
            {"name": g.name, "size": g.size, "params": len(g.params)} for g in layout.groups
        ],
        "description": task.description,
        "created_at": task.created_at,
        "rows": rows,
    }


MAX_GROUP_SIZE = 1 << 33  # values per group: far above any real layer (Llama-70B: ~0.9e9)


def parse_layout(data: dict) -> Layout:
    try:
        layout = Layout.from_dict(data)
        for g in layout.groups:
            check_group_name(g.name)
            if not isinstance(g.prefix, str) or any(not isinstance(p.name, str) for p in g.params):
                raise InvalidInput(f"group {g.name!r} has non-text names")
            if any(s < 1 for p in g.params for s in p.shape) or not 1 <= g.size <= MAX_GROUP_SIZE:
                raise InvalidInput(
                    f"group {g.name!r} has {g.size} values; a group has 1 to {MAX_GROUP_SIZE}"
                )
        check_store_names(layout)
    except TinysubError:
        raise
    except Exception as exc:  # noqa: BLE001 - any malformed document is the client's input
        raise InvalidInput(f"layout is not a tinysub layout document: {exc!r}") from exc
    return layout


@router.post("", response_model=TaskPublic, status_code=201)
def create_task(body: TaskCreate, session: SessionDep, response: Response, _: Writer) -> dict:
    """Create a task; sending the same task again returns it (200), a different one is 409."""
    layout = parse_layout(body.layout)
    existing = session.get(Task, body.id)
    if existing is not None:
        same = (existing.model, existing.revision, existing.layout_hash) == (
            body.model,
            body.revision,
            layout.hash,
        )
        if not same:
            raise Conflict(f"task {body.id!r} exists with another model, revision or layout")
        response.status_code = 200
        return task_public(existing, _rows(session, existing.id))
    task = Task(
        id=body.id,
        model=body.model,
        revision=body.revision,
        layout_hash=layout.hash,
        layout=layout.to_dict(),
        description=body.description,
    )
    session.add(task)
    session.commit()
    return task_public(task, None)


def _rows(session, task_id: str) -> int | None:
    return session.scalar(select(Trajectory.rows).where(Trajectory.task_id == task_id))


@router.get("", response_model=TaskList)
def list_tasks(
    session: SessionDep,
    settings: SettingsDep,
    _: Reader,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    model: Annotated[str | None, Query(max_length=200)] = None,
) -> dict:
    limit = min(limit, settings.page_size_max)
    q = select(Task)
    if model is not None:
        q = q.where(Task.model == model)
    total = session.scalar(select(func.count()).select_from(q.subquery()))
    tasks = session.scalars(q.order_by(Task.id).offset(offset).limit(limit)).all()
    rows = dict(
        session.execute(
            select(Trajectory.task_id, Trajectory.rows).where(
                Trajectory.task_id.in_([t.id for t in tasks])
            )
        ).all()
    )
    return {
        "items": [task_public(t, rows.get(t.id)) for t in tasks],
        "total": total,
        "offset": offset,
        "limit": limit,
    }


@router.get("/{task_id}", response_model=TaskPublic)
def get(task_id: TaskId, session: SessionDep, _: Reader) -> dict:
    task = get_task(session, task_id)
    return task_public(task, _rows(session, task_id))


@router.get("/{task_id}/layout")
def get_layout(task_id: TaskId, session: SessionDep, _: Reader) -> dict:
    """The full layout document (group and parameter names, shapes, offsets, hash)."""
    return get_task(session, task_id).layout
