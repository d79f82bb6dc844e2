"""POST /v1/recompute: queue one recompute job, which selects the bases (digesting their inputs
for stale_only), then queues one basis job per selected basis; its result lists them."""

from __future__ import annotations

from fastapi import APIRouter, Request

from services import quotas
from services.deps import RegistryDep, SessionDep, Writer
from services.models import Job
from services.routes.auth_first import AuthFirstRoute
from services.routes.jobs import TOO_MANY_JOBS, job_public, notify_runner
from services.schemas import JobPublic, RecomputeRequest
from storage.vocabulary import JobKind, JobStatus

router = APIRouter(tags=["recompute"], route_class=AuthFirstRoute)


@router.post("/recompute", response_model=JobPublic, status_code=202, responses=TOO_MANY_JOBS)
def recompute(
    body: RecomputeRequest,
    request: Request,
    registry: RegistryDep,
    session: SessionDep,
    caller: Writer,
) -> dict:
    """Queue a recompute job (dry_run too: it then queues no basis job). Once it succeeded, its
    `result` lists the basis jobs it queued and the bases it skipped, with reasons."""
    with quotas.one_more_job(registry, session, caller.token_id):
        job = Job(
            kind=JobKind.RECOMPUTE,
            status=JobStatus.PENDING,
            progress={},
            params=body.model_dump(mode="json"),
            token_id=caller.token_id,
        )
        session.add(job)
        session.commit()
    notify_runner(request)
    return job_public(session, job)
