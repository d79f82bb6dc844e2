"""Request and response bodies, one family per resource (Create / Public / List)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from services.security import SLUG_PATTERN
from storage.vocabulary import (
    BasisKind,
    BasisMode,
    BasisStatus,
    JobKind,
    JobStatus,
    PartStatus,
    TokenScope,
)

# Kinds, modes, statuses and scopes are storage.vocabulary's StrEnums: the JSON holds the same
# strings, and the OpenAPI document lists the allowed values (one schema per enum).
Slug = Annotated[str, StringConstraints(pattern=SLUG_PATTERN)]
Dtype = Literal["float32", "float16", "bfloat16"]
# all | last | last:K | first:K | every:K (the kernels' checkpoint selections)
Selection = Annotated[
    str, StringConstraints(pattern=r"^(all|last|(last|first|every):[1-9]\d{0,5})$")
]


# Integers the database can hold, floats JSON can carry.
DbInt = Annotated[int, Field(ge=1, le=2**31 - 1)]
Offset = Annotated[int, Field(ge=0, le=2**31 - 1)]
Finite = Annotated[float, Field(allow_inf_nan=False)]


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Page(_Out):
    total: int
    offset: int
    limit: int


# --------------------------------------------------------------------------------------- tasks
class TaskCreate(_In):
    id: Slug
    model: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    revision: Annotated[str, StringConstraints(max_length=200)] | None = None
    layout: dict[str, Any] = Field(description="storage.layout.Layout.to_dict() of the model")
    description: Annotated[str, StringConstraints(max_length=2000)] = ""


class GroupPublic(_Out):
    name: str
    size: int
    params: int


class TaskPublic(_Out):
    id: str
    model: str
    revision: str | None
    layout_hash: str
    rule: str
    groups: list[GroupPublic]
    description: str
    created_at: datetime
    rows: int | None = Field(None, description="Committed trajectory rows, if any.")


class TaskList(Page):
    items: list[TaskPublic]


# -------------------------------------------------------------------------------- trajectories
class TrajectoryCreate(_In):
    url: Annotated[str, StringConstraints(min_length=1, max_length=2048)] | None = Field(
        None,
        description="Register this existing store; without it the registry creates one "
        "for uploads.",
    )
    dtype: Dtype = "float32"
    # The kernels chunk a basis' rows like the trajectory's columns, and streaming a layer
    # holds about four copies of one basis chunk (chunk_cols x k x 4 bytes) in the server:
    # 256 KiB float32 chunks (the store default) keep that at 34 MB for k = 32.
    chunk_cols: Annotated[int, Field(ge=1024, le=1 << 26)] = 1 << 16


class TrajectoryPublic(Page):
    """A trajectory with one page of its rows' sha256s: `row_sha256` holds rows [offset,
    offset + limit) of `total` (= `rows`); `next_offset` asks for the next page."""

    task_id: str
    url: str
    source: Literal["registered", "upload"]
    dtype: str
    rows: int = Field(description="Committed rows (the same as total).")
    layout_hash: str
    row_sha256: list[dict[str, str]] = Field(
        description="Per committed row of this page (from offset), sha256 per group."
    )
    next_offset: int | None = Field(
        None, description="The offset of the next page; null on the last page."
    )
    # Pairs as 2-item lists, not tuples: pydantic writes a tuple as `prefixItems`, which
    # FastAPI's OpenAPI 3.1 document turned into an invalid `items: [...]` (schemathesis).
    staged: dict[int, dict[str, list[Annotated[list[int], Field(min_length=2, max_length=2)]]]] = (
        Field(
            default_factory=dict, description="Uncommitted rows: group -> received [start, stop)."
        )
    )


class PartPublic(_Out):
    row: int
    group: str
    offset: int
    count: int
    status: PartStatus


class StagedPart(_Out):
    offset: int
    count: int
    sha256: str


class StagedRowPublic(_Out):
    """The parts of one uncommitted row the registry holds, with the sha256 of their bytes."""

    row: int
    groups: dict[str, list[StagedPart]]


class RowCommit(_In):
    step: Annotated[int, Field(ge=-(2**62), le=2**62)] | None = None
    epoch: Finite | None = None
    metrics: dict[Annotated[str, StringConstraints(max_length=100)], Finite] = Field(
        default_factory=dict, max_length=100
    )


class RowPublic(_Out):
    index: int
    step: int | None
    epoch: float | None
    metrics: dict[str, float]
    sha256: dict[str, str]


# -------------------------------------------------------------------------------------- bases
class BasisCreate(_In):
    kind: BasisKind = BasisKind.TASK
    rank: Annotated[int, Field(ge=1, le=4096)] = 8
    mode: BasisMode = BasisMode.DELTA
    selection: Selection | list[Annotated[int, Field(ge=0)]] | None = Field(
        None, description="Checkpoint rows; default all (task, global) or last (unified, zeroshot)."
    )
    tasks: list[Slug] | None = Field(
        None, max_length=256, description="unified / zeroshot: the set of tasks."
    )
    seed: Annotated[int, Field(ge=0, lt=2**63)] = 0
    executor: Literal["local", "dask", "ray"] | None = None


class LayerPublic(_Out):
    name: str
    shape: tuple[int, int]
    dtype: str
    sha256: str
    nbytes: int
    chunk_rows: int = Field(description="Rows per stored chunk (what the server reads at once).")
    singular_values: list[float]
    energy: list[float]
    total_energy: float
    extent: list[float] | None = Field(
        default=None,
        description="RMS motion of the trajectory along each direction: theta's scale under "
        "the default training rule (absent for random bases and older bases).",
    )
    url: str = Field(description="Path of the layer's bytes on this server.")


class BasisPublic(_Out):
    task_id: str
    kind: BasisKind
    version: int
    status: BasisStatus
    params: dict[str, Any]
    inputs_digest: str | None
    error: str | None
    created_at: datetime
    ready_at: datetime | None
    aliases: list[str] = Field(default_factory=list)
    layers: list[LayerPublic] | None = None
    job_id: int | None = None


class BasisList(Page):
    items: list[BasisPublic]


class AliasSet(_In):
    version: DbInt


class AliasPublic(_Out):
    task_id: str
    kind: BasisKind
    name: str
    version: int
    updated_at: datetime


# ---------------------------------------------------------------------------------- recompute
class RecomputeRequest(_In):
    task_ids: list[Slug] | None = Field(None, max_length=10000)
    model: Annotated[str, StringConstraints(max_length=200)] | None = None
    kinds: list[BasisKind] | None = None
    stale_only: bool = False
    dry_run: bool = False


class RecomputeItem(_Out):
    task_id: str
    kind: BasisKind
    version: int = Field(description="The version the recomputation produces (or would).")
    previous_version: int
    job_id: int | None
    reason: str


class RecomputeResult(_Out):
    queued: list[RecomputeItem]
    skipped: list[RecomputeItem]


# --------------------------------------------------------------------------------------- jobs
class BasisRef(_Out):
    task_id: str
    kind: BasisKind
    version: int


class JobPublic(_Out):
    id: int
    kind: JobKind = Field(
        JobKind.BASIS,
        description="basis: computes `basis`. recompute: selects bases by `params` (a "
        "RecomputeRequest), then queues one basis job each; `result` lists them.",
    )
    basis: BasisRef | None = Field(description="The basis a basis job computes; null otherwise.")
    status: JobStatus
    progress: dict[str, Any]
    error: str | None
    error_code: str | None
    attempts: int
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    params: dict[str, Any] | None = Field(None, description="A recompute job's request.")
    result: RecomputeResult | None = Field(
        None, description="What a recompute job queued and skipped, once it succeeded."
    )


class JobList(Page):
    items: list[JobPublic]


# ------------------------------------------------------------------------------------- tokens
class TokenCreate(_In):
    name: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    scopes: list[TokenScope] = Field(min_length=1)


class TokenPublic(_Out):
    id: int
    name: str
    scopes: list[TokenScope]
    created_at: datetime
    revoked_at: datetime | None


class TokenCreated(TokenPublic):
    token: str = Field(description="The secret; shown only in this response.")


# --------------------------------------------------------------------------------------- runs
class RunCreate(_In):
    task_id: Slug
    method: Annotated[str, StringConstraints(pattern=r"^[a-z0-9_-]{1,32}$")]
    basis_task_id: Slug | None = None
    basis_kind: BasisKind | None = None
    basis_version: DbInt | None = None
    seed: Annotated[int, Field(ge=0, lt=2**63)] = 0
    params: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[Annotated[str, StringConstraints(max_length=100)], Finite] = Field(
        default_factory=dict, max_length=1000
    )
    seconds: Finite | None = None


class RunPublic(_Out):
    id: int
    task_id: str
    method: str
    basis_task_id: str | None
    basis_kind: BasisKind | None
    basis_version: int | None
    seed: int
    params: dict[str, Any]
    metrics: dict[str, float]
    seconds: float | None
    created_at: datetime


class RunList(Page):
    items: list[RunPublic]


class ErrorPublic(_Out):
    """Every error response: a stable code (storage.errors.ERROR_TYPES), a message for people,
    and optional structured detail."""

    code: str = Field(description="Names the error class, e.g. not_found, not_ready.")
    message: str
    detail: Any = None


class Health(_Out):
    status: str
    version: str
    executor: str
    anonymous_read: bool
