"""The queue's two moves in the database: claiming a pending job, re-queueing orphaned ones."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update

from services.context import Registry
from services.jobs.lease import Lease, _set_basis
from services.models import Job, utcnow
from storage.vocabulary import BasisStatus, JobStatus


def requeue_orphans(registry: Registry, *, older_than: float | None = None) -> list[int]:
    """Put `running` jobs back to `pending`: all of them (on taking the runner lock: their
    runner is gone) or those whose heartbeat is older than `older_than` seconds. Each job
    moves by a conditional update on the lease it was read with, so a job that finished,
    or whose heartbeat was renewed, in between is left alone."""
    requeued = []
    with registry.db.session() as s:
        q = select(Job).where(Job.status == JobStatus.RUNNING)
        if older_than is not None:
            q = q.where(Job.heartbeat_at < utcnow() - timedelta(seconds=older_than))
        for job in s.scalars(q).all():
            cond = [*Lease(job.id, job.owner, job.attempts).where()]
            if older_than is not None:
                cond.append(Job.heartbeat_at == job.heartbeat_at)
            progress = {**(job.progress or {}), "phase": "requeued"}
            res = s.execute(
                update(Job)
                .where(*cond)
                .values(status=JobStatus.PENDING, owner=None, progress=progress)
                .execution_options(synchronize_session=False)
            )
            if res.rowcount == 1:
                _set_basis(s, job.basis_id, status=BasisStatus.PENDING)
                requeued.append(job.id)
    return requeued


def claim(registry: Registry, owner: str) -> Lease | None:
    """Take the oldest pending job for `owner` (pending -> running, attempts + 1); its lease,
    or None when none is pending."""
    with registry.db.session() as s:
        candidates = s.scalars(
            select(Job.id).where(Job.status == JobStatus.PENDING).order_by(Job.id).limit(8)
        ).all()
        for job_id in candidates:
            now = utcnow()
            res = s.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == JobStatus.PENDING)
                .values(
                    status=JobStatus.RUNNING,
                    owner=owner,
                    attempts=Job.attempts + 1,
                    started_at=now,
                    heartbeat_at=now,
                )
            )
            if res.rowcount == 1:
                basis_id, attempt = s.execute(
                    select(Job.basis_id, Job.attempts).where(Job.id == job_id)
                ).one()
                _set_basis(s, basis_id, status=BasisStatus.RUNNING)
                s.commit()
                return Lease(job_id, owner, attempt)
    return None
