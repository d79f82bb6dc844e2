"""Jobs: list, inspect (progress per phase and layer; a recompute job's result), cancel."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from services.deps import Reader, RegistryDep, SessionDep, Writer
from services.models import Basis, Job, utcnow
from services.routes.auth_first import AuthFirstRoute
from services.schemas import ErrorPublic, JobList, JobPublic, Slug
from storage.errors import Conflict, NotFound
from storage.vocabulary import JOB_ACTIVE, BasisStatus, JobKind, JobStatus

router = APIRouter(prefix="/jobs", tags=["jobs"], route_class=AuthFirstRoute)
JobId = Annotated[int, Path(ge=1, le=2**31 - 1)]


# The answer of the routes that queue jobs when the token is at its cap (services.quotas).
TOO_MANY_JOBS: dict[int | str, dict[str, Any]] = {
    429: {
        "model": ErrorPublic,
        "description": "The token has max_pending_jobs_per_token jobs pending or running "
        "(code too_many_jobs); nothing was queued. Retry after Retry-After seconds.",
    }
}


def job_public(session, job: Job) -> dict:
    ref = None
    if job.basis_id is not None:
        basis = session.get(Basis, job.basis_id)
        ref = {"task_id": basis.task_id, "kind": basis.kind, "version": basis.version}
    return {
        "id": job.id,
        "kind": job.kind,
        "basis": ref,
        "status": job.status,
        "progress": job.progress or {},
        "error": job.error,
        "error_code": job.error_code,
        "attempts": job.attempts,
        "cancel_requested": job.cancel_requested,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "params": job.params,
        "result": job.result,
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
    status: Annotated[JobStatus | None, Query()] = None,
    task_id: Annotated[Slug | None, Query()] = None,
    kind: Annotated[JobKind | None, Query()] = None,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> dict:
    q = select(Job)
    if status:
        q = q.where(Job.status == status)
    if kind:
        q = q.where(Job.kind == kind)
    if task_id:  # basis jobs only: a recompute job has no task
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
    """A pending job is cancelled at once; a running one stops at its next progress step.

    Both writes are conditional on the status they expect, because a runner may claim (or
    finish) the job between this request's read and its write: a cancel that loses to a claim
    only sets `cancel_requested` on the running job (its runner stops it; the claim's state is
    kept), and one that loses to the job's end is a 409 that changes nothing.
    """
    job = get_job(session, job_id)  # 404 for an unknown job
    if not (_cancel_pending(session, job) or _request_cancel(session, job)):
        session.rollback()
        session.refresh(job)
        raise Conflict(f"job {job_id} already {job.status}")
    session.commit()
    session.refresh(job)  # the UPDATEs bypassed the object: show what is stored
    return job_public(session, job)


def _cancel_pending(session: Session, job: Job) -> bool:
    """Cancel `job` if it is still pending (and its basis with it); False if it is not."""
    done = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.status == JobStatus.PENDING)
        .values(
            status=JobStatus.CANCELLED,
            cancel_requested=True,
            error="cancelled by request",
            error_code="cancelled",
            finished_at=utcnow(),
        )
        .execution_options(synchronize_session=False)
    )
    if done.rowcount != 1:
        return False
    if job.basis_id is None:  # a recompute job: nothing was queued yet
        return True
    session.execute(
        update(Basis)
        .where(Basis.id == job.basis_id)
        .values(status=BasisStatus.FAILED, error="cancelled by request")
        .execution_options(synchronize_session=False)
    )
    return True


def _request_cancel(session: Session, job: Job) -> bool:
    """Ask a running job to stop (its runner checks at each progress step); False if it has
    finished. A job re-queued to pending since the first UPDATE counts too: its next run sees
    the request and ends cancelled before computing anything."""
    done = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.status.in_(JOB_ACTIVE))
        .values(cancel_requested=True)
        .execution_options(synchronize_session=False)
    )
    return done.rowcount == 1
