"""The project's vocabulary: one name and one type for each word the layers exchange.

Basis kinds, modes and scopes, the SVD methods, job and basis statuses, upload part
statuses, token scopes and training engines are each a `StrEnum` here. Why at the bottom
layer: every layer says these words (the kernels pick a mode, the registry stores a status,
the client waits for one, the CLI offers the choices), and the import contract lets every
layer import storage, so one definition serves them all instead of a tuple of strings per
module.

Each member *is* its string (`BasisMode.DELTA == "delta"`, `json.dumps` writes `"delta"`), so
JSON bodies, database columns and manifests hold exactly the bytes they held as bare strings.
Mind one difference: `repr()` of a member is `<BasisMode.DELTA: 'delta'>`, so messages format
`member.value` (or `str(member)`), never `{member!r}`. `parse` turns outside input into a member
or raises `InvalidInput` naming the allowed values.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import TypeVar

from storage.errors import InvalidInput

__all__ = [
    "BASIS_ACTIVE",
    "JOB_ACTIVE",
    "JOB_FINISHED",
    "BasisKind",
    "BasisMode",
    "BasisScope",
    "BasisStatus",
    "JobKind",
    "JobStatus",
    "PartStatus",
    "SvdMethod",
    "TokenScope",
    "TrainEngine",
    "parse",
    "values",
]


class BasisKind(StrEnum):
    """What a basis spans: one task's trajectory (task; global = one whole-encoder subspace),
    several tasks' checkpoints (unified; zeroshot = without the ordering task), or nothing
    (random: a seeded random orthonormal basis)."""

    TASK = "task"
    UNIFIED = "unified"
    ZEROSHOT = "zeroshot"
    GLOBAL = "global"
    RANDOM = "random"


class BasisMode(StrEnum):
    """What the SVD decomposes: the checkpoints as stored (raw), each minus theta0 (delta), or
    minus their mean (centered)."""

    RAW = "raw"
    DELTA = "delta"
    CENTERED = "centered"


class BasisScope(StrEnum):
    """One basis per layer group (layer), or one subspace of the whole model (global)."""

    LAYER = "layer"
    GLOBAL = "global"


class SvdMethod(StrEnum):
    """How pass 1 is done: the exact float64 Gram, or a randomized SVD."""

    GRAM = "gram"
    RANDOMIZED = "randomized"


class BasisStatus(StrEnum):
    """A basis version's life: pending -> running -> ready | failed."""

    PENDING = "pending"
    RUNNING = "running"
    READY = "ready"
    FAILED = "failed"


# A basis version being computed: queued or running (a new order for its kind must wait).
BASIS_ACTIVE: tuple[BasisStatus, ...] = (BasisStatus.PENDING, BasisStatus.RUNNING)


class JobKind(StrEnum):
    """A basis job computes one basis; a recompute job queues basis jobs."""

    BASIS = "basis"
    RECOMPUTE = "recompute"


class JobStatus(StrEnum):
    """A job's life: pending -> running -> succeeded | failed | cancelled."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        """True once the job will not change again."""
        return self in JOB_FINISHED


# A job that may still change: queued or running (what a token's cap counts).
JOB_ACTIVE: tuple[JobStatus, ...] = (JobStatus.PENDING, JobStatus.RUNNING)
# A job that will not change again.
JOB_FINISHED: tuple[JobStatus, ...] = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


class PartStatus(StrEnum):
    """An uploaded part of a trajectory row: received (staged) or part of a committed row."""

    STAGED = "staged"
    COMMITTED = "committed"


class TokenScope(StrEnum):
    """What a token may do; each scope includes the ones before it (admin > write > read)."""

    READ = "read"
    WRITE = "write"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        """The scope's place in read < write < admin."""
        return list(TokenScope).index(self)


class TrainEngine(StrEnum):
    """Who runs a fine-tuning run's steps: the Hugging Face Trainer, or tinysub's own loop
    (the same batches, groups and schedule; the paper run's committed ledger is the loop's)."""

    TRAINER = "trainer"
    LOOP = "loop"


E = TypeVar("E", bound=StrEnum)


def values(members: Iterable[StrEnum]) -> list[str]:
    """The strings of `members` (a vocabulary, or some of its members), in order: for
    messages and CLI help."""
    return [member.value for member in members]


def parse(vocabulary: type[E], value: object, what: str, *, among: Iterable[E] | None = None) -> E:
    """`value` as a member of `vocabulary` (and of `among`, where only some members are
    accepted); InvalidInput naming the accepted values otherwise, e.g.
    "mode 'sideways' is not one of ['raw', 'delta', 'centered']"."""
    accepted = list(vocabulary if among is None else among)
    member: E | None = None
    if isinstance(value, vocabulary):
        member = value
    elif isinstance(value, str):
        member = next((m for m in vocabulary if m.value == value), None)
    if member is not None and member in accepted:
        return member
    shown = value.value if isinstance(value, StrEnum) else value
    raise InvalidInput(f"{what} {shown!r} is not one of {values(accepted)}")
