"""The registry's tables (SQLAlchemy 2.0). Artefacts live in the store; rows here describe them.

A basis is one (task, kind, version): its status moves pending -> running -> ready | failed and
only a job that saw the basis store committed (manifest written, sha256 of every layer) may set
`ready`. Aliases name versions per (task, kind); `latest` is moved by the job runner, others by
users, each in one UPDATE. Tokens are stored as sha256 hex digests, never in clear.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from storage.vocabulary import BasisStatus, JobKind, JobStatus

# Kinds, statuses and scopes are storage.vocabulary's StrEnums; their columns stay strings (each
# member is its string), so the schema and the stored bytes are those of revision 0001/0002.


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """Aware UTC datetimes on every backend (SQLite would hand back naive ones)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):
        return value.replace(tzinfo=UTC) if value is not None else None


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, datetime: UTCDateTime()}


class Task(Base):
    __tablename__ = "tasks"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    model: Mapped[str] = mapped_column(String(200), index=True)
    revision: Mapped[str | None] = mapped_column(String(200))
    layout_hash: Mapped[str] = mapped_column(String(64), index=True)
    layout: Mapped[dict[str, Any]]
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Trajectory(Base):
    """The trajectory store of a task: registered by URL, or created by the registry for
    uploads (`source='upload'`, the only kind the registry writes rows into)."""

    __tablename__ = "trajectories"

    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id"), primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(16))
    dtype: Mapped[str] = mapped_column(String(16), default="float32")
    rows: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Basis(Base):
    __tablename__ = "bases"
    __table_args__ = (UniqueConstraint("task_id", "kind", "version", name="uq_basis_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    version: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default=BasisStatus.PENDING.value, index=True)
    # services.basis_params.BasisParams, as JSON.
    params: Mapped[dict[str, Any]]
    url: Mapped[str] = mapped_column(Text)
    # Filled from the committed manifest: [{name, shape, dtype, sha256, nbytes, singular_values,
    # energy, total_energy, extent?}, ...]
    layers: Mapped[list[Any] | None] = mapped_column(JSON, default=None)
    inputs_digest: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    ready_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Alias(Base):
    __tablename__ = "aliases"

    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Job(Base):
    """A durable job: `kind` 'basis' computes one basis (`basis_id`); 'recompute' selects bases
    (its request in `params`), then queues one basis job per selected basis and records what it
    queued and skipped in `result`. `token_id` is the token that ordered it (NULL for jobs made
    before revision 0002): pending and running jobs per token are capped."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    basis_id: Mapped[int | None] = mapped_column(ForeignKey("bases.id"), index=True)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.PENDING.value, index=True)
    # {"phase": str, "phases": {phase: {"done": n, "total": n}}, "layers": {name: state}}
    progress: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    error_code: Mapped[str | None] = mapped_column(String(64))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    owner: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Revision 0002 (kept last: the order of a migrated table's columns).
    kind: Mapped[str] = mapped_column(String(16), default=JobKind.BASIS.value)
    token_id: Mapped[int | None] = mapped_column(ForeignKey("tokens.id"), index=True)
    params: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class Token(Base):
    __tablename__ = "tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    scopes: Mapped[list[Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Run(Base):
    """A fine-tuning run inside a pulled basis (filled by the fine-tuning worker)."""

    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id"), index=True)
    method: Mapped[str] = mapped_column(String(32))
    basis_task_id: Mapped[str | None] = mapped_column(String(64))
    basis_kind: Mapped[str | None] = mapped_column(String(16))
    basis_version: Mapped[int | None] = mapped_column(Integer)
    seed: Mapped[int] = mapped_column(Integer, default=0)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    seconds: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
