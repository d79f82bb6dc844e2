"""The durable job runner: jobs live in the database, threads in the app run them.

A job is claimed with a conditional UPDATE (pending -> running, attempts + 1), so two runners
never take the same job. The claim is a lease: (owner, attempts) while `running` fences every
later write, so a runner whose job was re-queued and taken by another (its heartbeat went stale)
changes nothing and deletes nothing: its heartbeat, progress, finish, failure and re-queue are
all conditional updates on the lease, and it stops at its next progress step. A re-run first
looks for a basis the dead run had already committed (same registry uid in the manifest, every
layer re-verified); otherwise it recomputes from scratch, overwriting the partial output. A
basis becomes `ready`, and `latest` moves to it, in one transaction, and only after its store
was committed with a sha256 for every layer.

lease.py      the lease, its conditional writes and the exceptions that stop a running job
queue.py      claiming a pending job; re-queueing orphans (runner gone, heartbeat stale)
heartbeat.py  keeping the lease while a job runs: the heartbeat thread, the progress callback
work.py       what a claimed job does: a basis job's basis, a recompute job's queueing
finish.py     how an attempt ends: ready (latest moved), failed (output removed), re-queued
pool.py       the executors, one per name for the app's lifetime
runner.py     JobRunner: the threads, the runner lock, one claimed job run to its end

Names with a leading underscore are private to this package.
"""

from services.jobs.heartbeat import _Heartbeat as _Heartbeat
from services.jobs.heartbeat import _Progress as _Progress
from services.jobs.lease import JobCancelled, Lease, LeaseLost
from services.jobs.pool import ExecutorPool
from services.jobs.runner import JobRunner

__all__ = [
    "ExecutorPool",
    "JobCancelled",
    "JobRunner",
    "Lease",
    "LeaseLost",
]
