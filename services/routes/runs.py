"""Fine-tuning runs: method, basis (task, kind, version), seed, metrics."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from sqlalchemy import func, select

from services.bases import get_version, require_ready
from services.deps import Reader, SessionDep, Writer
from services.models import Run
from services.routes.auth_first import AuthFirstRoute
from services.schemas import RunCreate, RunList, RunPublic, Slug
from services.trajectories import get_task
from storage.errors import InvalidInput, NotFound

router = APIRouter(prefix="/runs", tags=["runs"], route_class=AuthFirstRoute)


@router.post("", response_model=RunPublic, status_code=201)
def create(body: RunCreate, session: SessionDep, _: Writer) -> Run:
    get_task(session, body.task_id)
    ref = (body.basis_task_id, body.basis_kind, body.basis_version)
    if any(x is not None for x in ref):
        if any(x is None for x in ref):
            raise InvalidInput("a basis is named by basis_task_id, basis_kind and basis_version")
        require_ready(get_version(session, *ref))
    run = Run(**body.model_dump())
    session.add(run)
    session.commit()
    return run


@router.get("", response_model=RunList)
def list_runs(
    session: SessionDep,
    _: Reader,
    task_id: Annotated[Slug | None, Query()] = None,
    method: Annotated[str | None, Query(max_length=32)] = None,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> dict:
    q = select(Run)
    if task_id:
        q = q.where(Run.task_id == task_id)
    if method:
        q = q.where(Run.method == method)
    total = session.scalar(select(func.count()).select_from(q.subquery()))
    items = session.scalars(q.order_by(Run.id).offset(offset).limit(limit)).all()
    return {"items": items, "total": total, "offset": offset, "limit": limit}


@router.get("/{run_id}", response_model=RunPublic)
def get(run_id: Annotated[int, Path(ge=1, le=2**31 - 1)], session: SessionDep, _: Reader) -> Run:
    run = session.get(Run, run_id)
    if run is None:
        raise NotFound(f"no run {run_id}")
    return run
