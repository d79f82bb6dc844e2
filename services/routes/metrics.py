"""Prometheus metrics of this API process (services/observability.py). A token with `read` is
needed (Prometheus sends it as `authorization: {credentials: ...}`), as for any other read."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.deps import Reader
from services.routes.auth_first import AuthFirstRoute

router = APIRouter(tags=["metrics"], route_class=AuthFirstRoute)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format."}},
)
def metrics(request: Request, _: Reader) -> Response:
    body = generate_latest(request.app.state.metrics.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
