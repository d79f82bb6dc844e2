"""The lease: one claim of a job, and the conditional writes that it fences.

A job is claimed with a conditional UPDATE (pending -> running, attempts + 1); (owner, attempts)
while `running` is the lease. Every later write of its runner (heartbeat, progress, finish,
failure, re-queue) is an update on the lease (`_transition`), so a runner whose job was re-queued
and taken by another changes nothing. The exceptions here are how a running job stops.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import update

from services.models import Basis, Job
from storage.vocabulary import JobStatus


class JobCancelled(Exception):
    """Raised inside a running job when a cancel was requested."""


class _Interrupted(Exception):
    """Raised inside a running job when the runner is stopping: the job is re-queued."""


class LeaseLost(Exception):
    """Raised inside a running job whose lease another runner took: stop, write nothing."""


@dataclass(frozen=True)
class Lease:
    """One claim of a job. (owner, attempt) is unique per claim: every claim adds an attempt,
    and the only hand-back that takes one away (`requeue` on stop) is by a stopping runner,
    which claims nothing more."""

    job_id: int
    owner: str
    attempt: int

    def where(self) -> tuple:
        return (
            Job.id == self.job_id,
            Job.owner == self.owner,
            Job.attempts == self.attempt,
            Job.status == JobStatus.RUNNING,
        )


def _transition(session: Any, lease: Lease, **values: Any) -> bool:
    """Update the job only while this lease still holds it; True if it did."""
    return session.execute(update(Job).where(*lease.where()).values(**values)).rowcount == 1


def _set_basis(session: Any, basis_id: int | None, **values: Any) -> None:
    """Move a basis job's basis with its job (a recompute job has none)."""
    if basis_id is not None:
        session.execute(update(Basis).where(Basis.id == basis_id).values(**values))
