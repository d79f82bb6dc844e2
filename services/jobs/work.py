"""The work of a claimed job: read what it needs, then a basis job's basis (the one an earlier
attempt committed, or computed now) or a recompute job's selection, decisions and queueing.

A recompute job (kind 'recompute', services/recompute.py) has no basis: it selects bases and
digests their inputs with a progress step per basis (so cancel, shutdown, a lost lease and the
timeout stop it as they stop a basis job), then queues its basis jobs in the transaction that
marks it succeeded: a recompute that did not succeed queued nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from services import quotas, recompute
from services.bases import spec_for
from services.compute import BasisSpec, committed, compute
from services.context import Registry
from services.jobs.heartbeat import _Progress
from services.jobs.lease import Lease, LeaseLost, _transition
from services.jobs.pool import ExecutorPool
from services.models import Basis, Job, utcnow
from services.schemas import RecomputeRequest
from storage.basis import BasisStore
from storage.vocabulary import JobKind, JobStatus

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Claimed:
    """What running a claimed job needs, read once: a basis job's spec, or a recompute job's
    request and the token that ordered it."""

    kind: JobKind
    attempts: int
    cancel: bool
    spec: BasisSpec | None
    request: dict[str, Any] | None
    token_id: int | None


def load(registry: Registry, job_id: int) -> _Claimed:
    """Read what running the job needs (a basis job's spec resolves its basis row)."""
    with registry.db.session() as s:
        job = s.get(Job, job_id)
        spec = None
        kind = JobKind(job.kind)
        if kind == JobKind.BASIS:
            spec = spec_for(registry, s, s.get(Basis, job.basis_id))
        return _Claimed(kind, job.attempts, job.cancel_requested, spec, job.params, job.token_id)


def committed_or_computed(
    registry: Registry,
    executors: ExecutorPool,
    job_id: int,
    spec: BasisSpec,
    attempts: int,
    executor_name: str | None,
    progress: _Progress,
) -> BasisStore:
    """The job's basis: the one an earlier attempt committed, if it passes its checks (a
    runner that stopped after committing must not redo hours of work), else computed now."""
    store = committed(spec)
    if store is not None:
        problems = store.verify()
        if not problems:
            progress.note("resumed")
            return store
        log.warning("job %s: committed basis fails checks %s; recomputing", job_id, problems)
    progress.note("computing", attempt=attempts)
    return compute(
        spec,
        executor=executors.get(executor_name),
        block_cols=registry.settings.block_cols,
        progress=progress,
    )


def run_recompute(
    registry: Registry,
    lease: Lease,
    claimed: _Claimed,
    progress: _Progress,
    notify: Callable[[], None],
) -> str:
    """Run a recompute job (services.recompute): select and decide with a progress step
    per basis, then queue the basis jobs in the transaction that marks it succeeded, under
    its token's cap, and `notify` the runner. Recompute jobs queue one at a time in this
    process, which is the only one running jobs (the runner lock)."""
    reg = registry
    req = RecomputeRequest.model_validate(claimed.request or {})
    progress.note("selecting", attempt=claimed.attempts)
    with reg.db.session() as s:
        candidates = recompute.select_newest(reg, s, req)
    decisions = recompute.decide(req, candidates, progress)
    progress.note("queueing")
    done = {**progress.state, "phase": "done"}
    token = claimed.token_id
    with reg.locks(("recompute",)), quotas.locked(reg, token), reg.db.session() as s:
        room = quotas.room(reg, s, token, besides=lease.job_id)
        result = recompute.queue(reg, s, req, decisions, room=room, token_id=token)
        if not _transition(
            s,
            lease,
            status=JobStatus.SUCCEEDED,
            finished_at=utcnow(),
            error=None,
            error_code=None,
            progress=done,
            result=result,
        ):
            raise LeaseLost(f"job {lease.job_id}: lost its lease; queued nothing")
    if result["queued"] and not req.dry_run:
        notify()
    return JobStatus.SUCCEEDED
