"""POST /v1/recompute: queue one job per selected basis and report what was queued."""

from __future__ import annotations

from fastapi import APIRouter, Request

from services import recompute as recompute_service
from services.deps import RegistryDep, SessionDep, Writer
from services.routes.auth_first import AuthFirstRoute
from services.routes.jobs import notify_runner
from services.schemas import RecomputeRequest, RecomputeResult

router = APIRouter(tags=["recompute"], route_class=AuthFirstRoute)


@router.post("/recompute", response_model=RecomputeResult)
def recompute(
    body: RecomputeRequest,
    request: Request,
    registry: RegistryDep,
    session: SessionDep,
    _: Writer,
) -> dict:
    result = recompute_service.recompute(registry, session, body)
    session.commit()
    if result["queued"] and not body.dry_run:
        notify_runner(request)
    return result
