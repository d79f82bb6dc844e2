"""A task's trajectory: register a store by URL or create one, then upload rows in parts.

POST   /v1/tasks/{id}/trajectory                               register {url} or create {}
GET    /v1/tasks/{id}/trajectory?offset=N&limit=M              rows, a page of sha256s, staged
PUT    /v1/tasks/{id}/trajectory/rows/{row}/groups/{group}?offset=N   raw float32 values
GET    /v1/tasks/{id}/trajectory/rows/{row}/parts              staged parts with sha256
POST   /v1/tasks/{id}/trajectory/rows/{row}/commit             {step, epoch, metrics}
DELETE /v1/tasks/{id}/trajectory/rows/{row}                    drop a staged row
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from services import trajectories as traj_service
from services.deps import Reader, RegistryDep, SessionDep, Writer
from services.routes.auth_first import AuthFirstRoute
from services.routes.tasks import TaskId
from services.schemas import (
    ErrorPublic,
    PartPublic,
    RowCommit,
    RowPublic,
    StagedRowPublic,
    TrajectoryCreate,
    TrajectoryPublic,
)
from services.settings import Settings
from services.streaming import spool_body

router = APIRouter(
    prefix="/tasks/{task_id}/trajectory", tags=["trajectories"], route_class=AuthFirstRoute
)
Row = Annotated[int, Path(ge=0, le=10**7)]
Group = Annotated[str, Path(max_length=128)]
# The row hashes come in pages, as every list does (tasks, bases, jobs, runs).
PageOffset = Annotated[int, Query(ge=0, le=2**31 - 1)]
PageLimit = Annotated[int, Query(ge=1, le=500)]


def _public(reg, session, task_id: str, offset: int = 0, limit: int = 50) -> dict:
    traj = traj_service.get_trajectory(session, task_id)
    store = traj_service.refresh_rows(reg, session, traj)
    limit = min(limit, reg.settings.page_size_max)
    page = store.row_page(offset, limit)
    following = offset + len(page)
    return {
        "task_id": task_id,
        "url": traj.url,
        "source": traj.source,
        "dtype": store.dtype,
        "rows": store.num_rows,
        "layout_hash": store.layout.hash,
        "row_sha256": [r.sha256 for r in page],
        "staged": traj_service.staged_parts(reg, task_id) if traj.source == "upload" else {},
        "total": store.num_rows,
        "offset": offset,
        "limit": limit,
        "next_offset": following if page and following < store.num_rows else None,
    }


@router.post("", response_model=TrajectoryPublic, status_code=201)
def create_or_register(
    task_id: TaskId, body: TrajectoryCreate, registry: RegistryDep, session: SessionDep, _: Writer
) -> dict:
    task = traj_service.get_task(session, task_id)
    traj_service.create_or_register(
        registry, session, task, url=body.url, dtype=body.dtype, chunk_cols=body.chunk_cols
    )
    session.commit()
    return _public(registry, session, task_id)


@router.get("", response_model=TrajectoryPublic)
def get(
    task_id: TaskId,
    registry: RegistryDep,
    session: SessionDep,
    _: Reader,
    offset: PageOffset = 0,
    limit: PageLimit = 50,
) -> dict:
    """The trajectory, with the sha256s of committed rows [offset, offset + limit)."""
    traj_service.get_task(session, task_id)
    return _public(registry, session, task_id, offset, limit)


@router.put(
    "/rows/{row}/groups/{group}",
    response_model=PartPublic,
    responses={
        503: {
            "model": ErrorPublic,
            "description": "max_concurrent_uploads parts are being received; retry after "
            "Retry-After seconds.",
        }
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        }
    },
)
async def put_part(
    task_id: TaskId,
    row: Row,
    group: Group,
    request: Request,
    registry: RegistryDep,
    session: SessionDep,
    _: Writer,
    offset: Annotated[int, Query(ge=0, le=2**40)] = 0,
    x_tinysub_sha256: Annotated[str | None, Header(pattern=r"^[0-9a-fA-F]{64}$")] = None,
) -> dict:
    """Stage values [offset, offset + n) of one group of one row (n = bytes / 4)."""
    # The body is no parameter (FastAPI would read it before the token check): it is read here,
    # after every dependency and the checks that need no body, into a spool file. The
    # body-size middleware still stops it past max_upload_bytes while it arrives.
    task, traj = await run_in_threadpool(traj_service.part_target, session, task_id, group)
    slots, spool_dir = request.app.state.upload_slots, _spool_dir(registry.settings)
    # Entered left to right: the slot is taken before any byte of the body is read.
    with slots.hold(), await spool_body(request, spool_dir) as part:
        return await run_in_threadpool(
            traj_service.put_part, registry, task, traj, row, group, offset, part, x_tinysub_sha256
        )


def _spool_dir(settings: Settings) -> str | None:
    return str(settings.upload_spool_dir) if settings.upload_spool_dir else None


@router.get("/rows/{row}/parts", response_model=StagedRowPublic)
def staged_row(
    task_id: TaskId, row: Row, registry: RegistryDep, session: SessionDep, _: Reader
) -> dict:
    """The staged parts of an uncommitted row and their sha256: an upload that was cut off
    sends only the parts missing here (or staged with other bytes)."""
    traj_service.get_trajectory(session, task_id)
    return {"row": row, "groups": traj_service.staged_digests(registry, task_id, row)}


@router.post("/rows/{row}/commit", response_model=RowPublic)
def commit_row(
    task_id: TaskId,
    row: Row,
    registry: RegistryDep,
    session: SessionDep,
    _: Writer,
    body: RowCommit | None = None,
) -> dict:
    """Commit a fully staged row (idempotent: a committed row is returned as it is)."""
    body = body or RowCommit()
    task = traj_service.get_task(session, task_id)
    traj = traj_service.get_trajectory(session, task_id)
    return traj_service.commit_row(
        registry, session, task, traj, row, step=body.step, epoch=body.epoch, metrics=body.metrics
    )


@router.delete("/rows/{row}", status_code=204)
def drop_row(
    task_id: TaskId, row: Row, registry: RegistryDep, session: SessionDep, _: Writer
) -> Response:
    traj_service.get_trajectory(session, task_id)
    traj_service.drop_row(registry, task_id, row)
    return Response(status_code=204)
