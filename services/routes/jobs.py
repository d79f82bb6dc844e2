"""Jobs: list, inspect (progress per phase and layer), cancel."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request
from sqlalchemy import func, select

from services.deps import Reader, RegistryDep, SessionDep, Writer
from services.models import JOB_FINISHED, Basis, Job, utcnow
from services.routes.auth_first import AuthFirstRoute
from services.schemas import JobList, JobPublic, Slug
from storage.errors import Conflict, NotFound

router = APIRouter(prefix="/jobs", tags=["jobs"], route_class=AuthFirstRoute)
JobId = Annotated[int, Path(ge=1, le=2**31 - 1)]


def job_public(session, job: Job) -> dict:
    basis = session.get(Basis, job.basis_id)
    return {
        "id": job.id,
        "basis": {"task_id": basis.task_id, "kind": basis.kind, "version": basis.version},
        "status": job.status,
        "progress": job.progress or {},
        "error": job.error,
        "error_code": job.error_code,
        "attempts": job.attempts,
        "cancel_requested": job.cancel_requested,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
    }


def get_job(session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"no job {job_id}")
    return job


def notify_runner(request: Request) -> None:
    runner = getattr(request.app.state, "runner", None)
    if runner is not None:
        runner.notify()


@router.get("", response_model=JobList)
def list_jobs(
    session: SessionDep,
    _: Reader,
    status: Annotated[
        Literal["pending", "running", "succeeded", "failed", "cancelled"] | None, Query()
    ] = None,
    task_id: Annotated[Slug | None, Query()] = None,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> dict:
    q = select(Job)
    if status:
        q = q.where(Job.status == status)
    if task_id:
        q = q.join(Basis, Basis.id == Job.basis_id).where(Basis.task_id == task_id)
    total = session.scalar(select(func.count()).select_from(q.subquery()))
    jobs = session.scalars(q.order_by(Job.id.desc()).offset(offset).limit(limit)).all()
    return {
        "items": [job_public(session, j) for j in jobs],
        "total": total,
        "offset": offset,
        "limit": limit,
    }


@router.get("/{job_id}", response_model=JobPublic)
def get(job_id: JobId, session: SessionDep, _: Reader) -> dict:
    return job_public(session, get_job(session, job_id))


@router.post("/{job_id}/cancel", response_model=JobPublic)
def cancel(job_id: JobId, registry: RegistryDep, session: SessionDep, _: Writer) -> dict:
    """A pending job is cancelled at once; a running one stops at its next progress step."""
    job = get_job(session, job_id)
    if job.status in JOB_FINISHED:
        raise Conflict(f"job {job_id} already {job.status}")
    job.cancel_requested = True
    if job.status == "pending":
        job.status = "cancelled"
        job.error, job.error_code = "cancelled by request", "cancelled"
        job.finished_at = utcnow()
        basis = session.get(Basis, job.basis_id)
        basis.status, basis.error = "failed", "cancelled by request"
    session.commit()
    return job_public(session, job)
