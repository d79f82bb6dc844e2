"""Route modules, one per resource; `api_router()` mounts them under /v1."""

from __future__ import annotations

from fastapi import APIRouter

from services.errors import error_responses
from services.routes import (
    bases,
    health,
    jobs,
    metrics,
    recompute,
    runs,
    tasks,
    tokens,
    trajectories,
)


def api_router() -> APIRouter:
    router = APIRouter(prefix="/v1", responses=error_responses())
    for module in (health, tokens, tasks, trajectories, bases, jobs, recompute, runs, metrics):
        router.include_router(module.router)
    return router
