"""The app factory: `create_app(settings)` builds a registry; nothing is created at import.

uvicorn --factory services.app:create_app     (settings from TINYSUB_* variables)
tinysub serve                                  (the same, with command-line options)
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI

from services.context import Registry
from services.db import Database
from services.errors import install_error_handlers
from services.jobs import JobRunner
from services.middleware import BodyLimit
from services.routes import api_router
from services.settings import Settings

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
    install_error_handlers(app)
    app.add_middleware(
        BodyLimit, upload_bytes=settings.max_upload_bytes, json_bytes=settings.max_json_bytes
    )
    app.include_router(api_router())
    return app
