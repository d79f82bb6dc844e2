"""The app factory: `create_app(settings)` builds a registry; nothing is created at import.

uvicorn --factory services.app:create_app     (settings from TINYSUB_* variables)
tinysub serve                                  (the same, with command-line options)
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
import re
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from services.context import Registry
from services.db import Database
from services.errors import install_error_handlers
from services.jobs import JobRunner
from services.middleware import BodyLimit
from services.observability import Metrics, Observe
from services.routes import api_router
from services.settings import Settings
from services.streaming import UploadSlots

log = logging.getLogger(__name__)


def create_app(
    settings: Settings | None = None,
    *,
    database: Database | None = None,
    run_jobs: bool | None = None,
) -> FastAPI:
    """Build the registry app.

    Parameters
    ----------
    settings:
        Configuration; default: read from `TINYSUB_*` environment variables.
    database:
        An existing `Database` to share (tests); default: one for `settings.database_url`.
    run_jobs:
        Start the job runner threads with the app's lifespan; default `settings.run_jobs`.
        Without them, jobs queue up until `app.state.runner.run_pending()` runs them.
    """
    settings = settings or Settings()
    registry = Registry.from_settings(settings, database)
    runner = JobRunner(registry)
    metrics = Metrics(registry.db)
    runner.metrics = metrics
    start_jobs = settings.run_jobs if run_jobs is None else run_jobs

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if start_jobs:
            runner.start()
        try:
            yield
        finally:
            runner.stop()

    app = FastAPI(
        title="tinysub registry",
        version="1",
        description="Trajectories, layer-wise bases by task ID, jobs and batch recomputation.",
        lifespan=lifespan,
    )
    app.state.registry = registry
    app.state.runner = runner
    app.state.upload_slots = UploadSlots(settings.max_concurrent_uploads)
    install_error_handlers(app)
    hide_server_paths(app, registry)
    app.add_middleware(
        BodyLimit, upload_bytes=settings.max_upload_bytes, json_bytes=settings.max_json_bytes
    )
    app.state.metrics = metrics
    # Added last: outermost, so it sees every response (413s of BodyLimit included).
    app.add_middleware(Observe, metrics=metrics, templates=lambda: app.openapi()["paths"])
    app.include_router(api_router())
    return app


# ------------------------------------------------------------------ paths in error bodies
def hide_server_paths(app: FastAPI, registry: Registry) -> None:
    """Wrap every error handler so that no error body shows where the server keeps its files:
    the store root, data dir and spool dir become `<store>`, `<data_dir>`, `<spool>`. Messages
    from the storage layer name the files they failed on; the server log keeps them whole."""
    pattern, labels = _server_paths(registry)
    for cls, handler in list(app.exception_handlers.items()):
        app.exception_handlers[cls] = _redacting(handler, pattern, labels)


def _server_paths(registry: Registry) -> tuple[re.Pattern[str], dict[str, str]]:
    settings = registry.settings
    candidates = [
        ("<store>", registry.root.url),
        ("<store>", registry.root.root),
        ("<data_dir>", str(settings.data_dir)),
        ("<spool>", str(settings.upload_spool_dir or "")),
    ]
    labels: dict[str, str] = {}
    for label, path in candidates:
        if "://" in path:
            labels[path.rstrip("/")] = label
        elif len(path.strip("/")) > 1:  # never "/" or "": they would mangle every path
            for form in (os.path.abspath(path), os.path.realpath(path)):
                labels[form] = label
    if not labels:
        return re.compile(r"(?!)"), labels  # matches nothing (an empty alternation would match "")
    # Longest first (the store root lies inside the data dir), and only whole path segments.
    alternatives = "|".join(re.escape(p) for p in sorted(labels, key=len, reverse=True))
    return re.compile(f"(?:{alternatives})(?![^/\\s'\",:;)\\]}}])"), labels


def _redacting(
    handler: Callable[..., Any], pattern: re.Pattern[str], labels: dict[str, str]
) -> Callable[[Request, Exception], Coroutine[Any, Any, Response]]:
    async def handle(request: Request, exc: Exception) -> Response:
        response = handler(request, exc)
        if inspect.isawaitable(response):
            response = await response
        return _without_paths(response, pattern, labels)

    return handle


def _without_paths(
    response: Response, pattern: re.Pattern[str], labels: dict[str, str]
) -> Response:
    if not isinstance(response, JSONResponse):
        return response
    body = json.loads(response.body)
    clean = _redact(body, pattern, labels)
    if clean == body:
        return response
    headers = {
        k: v for k, v in response.headers.items() if k not in ("content-length", "content-type")
    }
    return JSONResponse(clean, status_code=response.status_code, headers=headers)


def _redact(value: Any, pattern: re.Pattern[str], labels: dict[str, str]) -> Any:
    if isinstance(value, str):
        return pattern.sub(lambda m: labels[m.group(0)], value)
    if isinstance(value, list):
        return [_redact(v, pattern, labels) for v in value]
    if isinstance(value, dict):
        return {k: _redact(v, pattern, labels) for k, v in value.items()}
    return value
