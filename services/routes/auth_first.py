"""Routes that check the caller's token before anything reads the request body.

FastAPI reads and parses a route's body before it resolves any dependency, the token check
included: without this, a client with no token could make the server read (and hold) a whole
body before being told 401. Every router of the API uses `AuthFirstRoute`.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, get_args

from fastapi import Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from fastapi.security import HTTPBearer
from starlette.concurrency import run_in_threadpool

from services.deps import Admin, Principal, Reader, Writer

# The scope checks behind the Reader, Writer and Admin aliases (`Depends(require(scope))`).
_SCOPE_CHECKS = frozenset(get_args(alias)[1].dependency for alias in (Reader, Writer, Admin))
_bearer = HTTPBearer(auto_error=False)

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


def scope_check(dependant: Dependant) -> Callable[..., Principal] | None:
    """The route's token check (a direct dependency), if it has one."""
    return next((d.call for d in dependant.dependencies if d.call in _SCOPE_CHECKS), None)


async def authorize(request: Request, check: Callable[..., Principal]) -> Principal:
    """Run a route's token check as its dependency would, without touching the body."""
    registry = request.app.state.registry
    creds = await _bearer(request)

    def run() -> Principal:
        with registry.db.sessionmaker() as session:
            return check(registry=registry, session=session, creds=creds)

    return await run_in_threadpool(run)


class AuthFirstRoute(APIRoute):
    """An APIRoute whose body, if it has one, is read only after its token check passed.

    The check then runs again as the route's own dependency (one more indexed token lookup):
    the route keeps its usual signature and its OpenAPI description."""

    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()
        check = scope_check(self.dependant) if self.body_field is not None else None
        if check is None:
            return handler  # no body, or no token needed: FastAPI reads nothing early

        async def authorized_first(request: Request) -> Response:
            await authorize(request, check)
            return await handler(request)

        return authorized_first
