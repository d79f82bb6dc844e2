"""Liveness: no token needed, nothing secret in it."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from fastapi import APIRouter
from sqlalchemy import text

from services.deps import RegistryDep
from services.routes.auth_first import AuthFirstRoute
from services.schemas import Health

router = APIRouter(tags=["health"], route_class=AuthFirstRoute)


@router.get("/health", response_model=Health)
def health(registry: RegistryDep) -> dict:
    with registry.db.engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    try:
        v = version("tinysub")
    except PackageNotFoundError:
        v = "0+unknown"
    return {
        "status": "ok",
        "version": v,
        "executor": registry.settings.executor,
        "anonymous_read": registry.settings.anonymous_read,
    }
