"""One error hierarchy for the whole system.

Every error tinysub raises on purpose derives from `TinysubError`. Each class also derives from
the built-in exception a caller would naturally catch (`KeyError` for a missing thing,
`ValueError` for bad input), and carries a stable `code` string: the registry maps codes to HTTP
statuses in one table and the client rebuilds the same class from the JSON body.
"""

from __future__ import annotations

import errno
from typing import Any

_FULL = (errno.ENOSPC, errno.EDQUOT)


class TinysubError(Exception):
    """Base of every error tinysub raises on purpose."""

    code = "tinysub_error"

    def __init__(self, message: str, *, detail: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail

    def __str__(self) -> str:  # KeyError would otherwise print the repr of the message
        return self.message


class NotFound(TinysubError, KeyError):
    """A task, store, row, layer, basis, version or alias does not exist."""

    code = "not_found"


class Conflict(TinysubError):
    """The request contradicts what is already stored (a row sent twice with other bytes)."""

    code = "conflict"


class InvalidInput(TinysubError, ValueError):
    """The input itself is wrong: shapes, ranks, names, non-finite values."""

    code = "invalid_input"


class LayoutMismatch(InvalidInput):
    """Parameters do not match the layout a store or basis was built for."""

    code = "layout_mismatch"


class ReadOnly(TinysubError, PermissionError):
    """A write was attempted through a read-only handle."""

    code = "read_only"


class StorageError(TinysubError, OSError):
    """The storage backend failed, or returned bytes that fail their checksum."""

    code = "storage_error"


class Unauthorized(TinysubError, PermissionError):
    """No valid credentials were presented."""

    code = "unauthorized"


class Forbidden(TinysubError, PermissionError):
    """Valid credentials without the scope the action needs."""

    code = "forbidden"


class NotReady(Conflict):
    """The basis exists but is not `ready` (pending, running or failed), so it is not served."""

    code = "not_ready"


class PayloadTooLarge(InvalidInput):
    """A request body over the configured limit; nothing of it was written."""

    code = "payload_too_large"


class RangeNotSatisfiable(InvalidInput):
    """A byte range outside the resource."""

    code = "range_not_satisfiable"


class InsufficientStorage(StorageError):
    """The storage backend is full (ENOSPC, EDQUOT); what was being written was not committed."""

    code = "insufficient_storage"


class TaskFailed(TinysubError):
    """A chunk task raised an error that is not a TinysubError (a bug, a crashed worker).

    Raised by `worker.executors`; defined here so that every process (the client rebuilding a
    job's error included) knows the class without importing the workers.
    """

    code = "task_failed"


class TooManyJobs(TinysubError):
    """The token already has `max_pending_jobs_per_token` jobs pending or running; nothing was
    queued. `retry_after` (seconds, also in `detail`) says when to try again."""

    code = "too_many_jobs"

    def __init__(self, message: str, *, detail: Any = None, retry_after: int = 30) -> None:
        super().__init__(message, detail=detail)
        self.retry_after = retry_after


class JobTimedOut(TinysubError):
    """A job ran past `job_timeout_seconds`: failed, not retried (it would time out again)."""

    code = "job_timeout"


class SchemaMismatch(TinysubError):
    """The database's schema is not the one this code needs, and will not be upgraded here."""

    code = "schema_mismatch"


def storage_error(message: str, exc: OSError) -> StorageError:
    """The StorageError for a failed write: `InsufficientStorage` when the disk or quota is full,
    so callers (and HTTP clients, as 507) can tell "free some space" from "the disk is broken"."""
    cls = InsufficientStorage if getattr(exc, "errno", None) in _FULL else StorageError
    return cls(f"{message}: {exc}")


ERROR_TYPES: dict[str, type[TinysubError]] = {
    cls.code: cls
    for cls in (
        TinysubError,
        NotFound,
        Conflict,
        InvalidInput,
        LayoutMismatch,
        ReadOnly,
        StorageError,
        Unauthorized,
        Forbidden,
        NotReady,
        PayloadTooLarge,
        RangeNotSatisfiable,
        InsufficientStorage,
        TaskFailed,
        TooManyJobs,
        JobTimedOut,
        SchemaMismatch,
    )
}
