"""The cap on each token's queued work: at most `max_pending_jobs_per_token` jobs pending or
running per token, so that one write token cannot fill the job queue.

An order over the cap is refused with `TooManyJobs` (429, Retry-After) and queues nothing. The
count and the insert happen under the token's lock: a process-local lock and, on PostgreSQL, the
token's row locked FOR UPDATE until the order commits, so concurrent orders of one token cannot
both pass a cap that has room for one. (SQLite ignores FOR UPDATE: there, orders of one token
sent at the same moment through different API processes may each take the last place.)

Admin tokens are not capped: an admin can create any number of write tokens, so a cap on its
own would buy nothing, and the operator's bulk recomputes need the room. Jobs made before the
cap existed (no token recorded) count for none.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from services.context import Registry
from services.models import Job, Token
from services.security import has_scope
from storage.errors import TooManyJobs
from storage.vocabulary import JOB_ACTIVE, TokenScope

# Jobs take minutes to hours; a client told to come back sooner would only be refused again.
RETRY_AFTER_SECONDS = 30


def pending_jobs(session: Session, token_id: int, *, besides: int | None = None) -> int:
    """Jobs of the token that are pending or running (`besides`: a job not to count)."""
    q = select(func.count(Job.id)).where(Job.token_id == token_id, Job.status.in_(JOB_ACTIVE))
    if besides is not None:
        q = q.where(Job.id != besides)
    return session.scalar(q) or 0


def room(
    reg: Registry, session: Session, token_id: int | None, *, besides: int | None = None
) -> int | None:
    """How many more jobs the token may queue now: None for no limit (an admin token, or no
    token recorded), else the cap minus its pending and running jobs (0 or more)."""
    if token_id is None:
        return None
    scopes = session.scalar(select(Token.scopes).where(Token.id == token_id).with_for_update())
    if has_scope(scopes or (), TokenScope.ADMIN):
        return None
    cap = reg.settings.max_pending_jobs_per_token
    return max(0, cap - pending_jobs(session, token_id, besides=besides))


def refusal(reg: Registry, session: Session, token_id: int) -> TooManyJobs:
    cap = reg.settings.max_pending_jobs_per_token
    pending = pending_jobs(session, token_id)
    return TooManyJobs(
        f"this token has {pending} jobs pending or running, the most this registry allows "
        f"(max_pending_jobs_per_token = {cap}); nothing was queued: retry once some have "
        f"finished (GET /v1/jobs?status=pending), in about {RETRY_AFTER_SECONDS} s",
        detail={"pending": pending, "limit": cap, "retry_after": RETRY_AFTER_SECONDS},
        retry_after=RETRY_AFTER_SECONDS,
    )


@contextlib.contextmanager
def locked(reg: Registry, token_id: int | None) -> Iterator[None]:
    """Hold the token's process-local lock (the database lock is `room`'s FOR UPDATE, held
    until the caller's transaction ends: commit inside this block)."""
    if token_id is None:
        yield
        return
    with reg.locks(("job-quota", token_id)):
        yield


@contextlib.contextmanager
def one_more_job(reg: Registry, session: Session, token_id: int | None) -> Iterator[None]:
    """The block queues one job for the token and commits; raises `TooManyJobs` (queueing
    nothing) when the token is at its cap."""
    with locked(reg, token_id):
        if room(reg, session, token_id) == 0:
            raise refusal(reg, session, token_id)
        yield
