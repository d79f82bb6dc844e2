"""Registry settings, read from `TINYSUB_*` environment variables (pydantic-settings).

Everything has a default that runs on one machine with nothing installed by hand: SQLite and the
artefact store live under `data_dir`, jobs run on the local executor, and every request needs a
token (anonymous read is for trusted networks only, so it is opt-in).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

EXECUTOR_NAMES = ("local", "dask", "ray")


class Settings(BaseSettings):
    """Configuration of one registry process. Build it explicitly or from the environment."""

    model_config = SettingsConfigDict(env_prefix="TINYSUB_", extra="ignore")

    data_dir: Path = Field(
        default=Path(".tinysub"), description="Home of the default SQLite file and store."
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL; default sqlite:///<data_dir>/registry.db. "
        "PostgreSQL: postgresql+psycopg://user:pass@host/db.",
    )
    store_root: str | None = Field(
        default=None,
        description="Where trajectories and bases are written: a local path (default "
        "<data_dir>/store) or any fsspec URL (s3://bucket/prefix).",
    )
    storage_options: dict[str, Any] = Field(
        default_factory=dict, description="fsspec options for store_root (JSON)."
    )
    trusted_store_prefixes: list[str] = Field(
        default_factory=list,
        description="Extra roots from which existing trajectory stores may be registered by "
        "URL. Nothing outside store_root and these prefixes is ever opened.",
    )
    executor: str = Field(default="local", description="local | dask | ray")
    executor_address: str | None = Field(
        default=None, description="Dask scheduler address or Ray cluster address."
    )
    executor_workers: int | None = Field(
        default=None, description="Workers of a pool or cluster the executor starts itself."
    )
    block_cols: int = Field(default=1 << 16, ge=1, description="Columns per kernel task.")
    anonymous_read: bool = Field(
        default=False, description="Serve read endpoints without a token (trusted networks)."
    )
    max_upload_bytes: int = Field(
        default=64 << 20, ge=1024, description="Largest request body of one upload part."
    )
    max_json_bytes: int = Field(default=1 << 20, ge=1024, description="Largest JSON body.")
    max_concurrent_uploads: int = Field(
        default=8,
        ge=1,
        le=4096,
        description="Upload parts received at the same time; one more is answered 503 with "
        "Retry-After. Spool space needed: this x max_upload_bytes.",
    )
    upload_spool_dir: Path | None = Field(
        default=None,
        description="Where upload parts are spooled while they arrive (default: the system "
        "temp dir; keep it off tmpfs, which is memory).",
    )
    migrate_on_start: bool = Field(
        default=True,
        description="Apply pending database migrations when the registry starts (one process "
        "at a time: a PostgreSQL advisory lock, SQLite's write lock). False: refuse to start "
        "until `tinysub db upgrade` has run.",
    )
    run_jobs: bool = Field(default=True, description="Run the job runner thread in this app.")
    job_workers: int = Field(default=1, ge=1, le=64, description="Jobs run at the same time.")
    job_poll_seconds: float = Field(default=0.5, gt=0)
    job_max_attempts: int = Field(default=3, ge=1)
    job_lease_seconds: float = Field(
        default=300.0,
        gt=0,
        description="A running job whose heartbeat is older than this is re-queued.",
    )
    job_timeout_seconds: float = Field(
        default=6 * 3600.0,
        gt=0,
        description="A job running longer than this (from its claim) is failed with "
        "`job_timeout`; it is checked at every progress step of the kernels.",
    )
    max_pending_jobs_per_token: int = Field(
        default=100,
        ge=1,
        description="Jobs one write token may have pending or running at once; an order over "
        "it (a basis, a recompute) is answered 429 with Retry-After, and a recompute queues no "
        "more than the room left. Admin tokens are not capped.",
    )
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="Server log lines: text, or one JSON object per line; both carry the "
        "request ID (X-Request-ID).",
    )
    max_basis_values: int = Field(
        default=1 << 33,
        ge=1,
        description="Largest basis an order may ask for, in values (rank x the layout's size; "
        "2^33 float32 values = 32 GiB). A larger order is refused with 422.",
    )
    stream_block_bytes: int = Field(
        default=4 << 20, ge=1 << 16, description="Bytes read per step while streaming a layer."
    )
    page_size_max: int = Field(default=500, ge=1)

    @field_validator("executor")
    @classmethod
    def _known_executor(cls, value: str) -> str:
        if value not in EXECUTOR_NAMES:
            raise ValueError(f"executor {value!r} is not one of {list(EXECUTOR_NAMES)}")
        return value

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'registry.db').resolve()}"

    @property
    def resolved_store_root(self) -> str:
        if self.store_root:
            return self.store_root if "://" in self.store_root else os.path.abspath(self.store_root)
        return str((self.data_dir / "store").resolve())

    def prepare(self) -> None:
        """Create the local directories the defaults point at (never at import time)."""
        if self.database_url is None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        if "://" not in self.resolved_store_root:
            Path(self.resolved_store_root).mkdir(parents=True, exist_ok=True)
        if self.upload_spool_dir is not None:
            self.upload_spool_dir.mkdir(parents=True, exist_ok=True)
