"""`tinysub serve`: run the registry with uvicorn."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tinysub.cli.common import err_console


def serve_cmd(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    data_dir: Annotated[
        Path | None, typer.Option(help="Home of the SQLite file and store (TINYSUB_DATA_DIR).")
    ] = None,
    database_url: Annotated[str | None, typer.Option(help="SQLAlchemy URL.")] = None,
    store_root: Annotated[str | None, typer.Option(help="Local path or fsspec URL.")] = None,
    executor: Annotated[str | None, typer.Option(help="local | dask | ray")] = None,
    address: Annotated[str | None, typer.Option(help="Dask scheduler / Ray address.")] = None,
    trusted_prefix: Annotated[
        list[str] | None,
        typer.Option(help="Extra root from which stores may be registered (repeatable)."),
    ] = None,
    anonymous_read: Annotated[
        bool | None, typer.Option(help="Serve reads without a token (trusted networks only).")
    ] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Start the registry. Other settings come from TINYSUB_* environment variables."""
    import uvicorn  # noqa: PLC0415 - server extra; optional

    from services.app import create_app  # noqa: PLC0415 - server extra; optional
    from services.observability import log_config  # noqa: PLC0415 - server extra; optional
    from services.settings import Settings  # noqa: PLC0415 - server extra; optional

    overrides = {
        "data_dir": data_dir,
        "database_url": database_url,
        "store_root": store_root,
        "executor": executor,
        "executor_address": address,
        "trusted_store_prefixes": trusted_prefix or None,
        "anonymous_read": anonymous_read,
    }
    settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    app = create_app(settings)
    err_console.print(
        f"tinysub registry on http://{host}:{port} (store {settings.resolved_store_root}, "
        f"executor {settings.executor})"
    )
    # Our log lines and uvicorn's, text or JSON (TINYSUB_LOG_FORMAT), each with its request ID.
    config = log_config(settings.log_format, log_level)
    uvicorn.run(app, host=host, port=port, log_level=log_level, log_config=config)
