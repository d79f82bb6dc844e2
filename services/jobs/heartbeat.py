"""Keeping a running job's lease: the heartbeat thread and the kernels' progress callback.

The heartbeat renews the lease every quarter lease; the progress callback flushes progress,
checks for a cancel, a stopping runner, the timeout and the lease, and stops the job (by raising
inside the kernels) when one of them says so.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Protocol

from sqlalchemy import select

from services.context import Registry
from services.jobs.lease import JobCancelled, Lease, LeaseLost, _Interrupted, _transition
from services.models import Job, utcnow
from storage.errors import JobTimedOut

log = logging.getLogger(__name__)


class _Runner(Protocol):
    """What these helpers read of their `JobRunner` (typed so, since the runner imports them)."""

    registry: Registry
    stopping: bool


class _Progress:
    """The kernels' progress(phase, done, total) callback for one job."""

    def __init__(
        self, runner: _Runner, lease: Lease, beat: _Heartbeat, interval: float = 0.5
    ) -> None:
        self.runner = runner
        self.lease = lease
        self.beat = beat
        self.interval = interval
        self.timeout = runner.registry.settings.job_timeout_seconds
        self.deadline = time.monotonic() + self.timeout
        self.state: dict[str, Any] = {"phase": "starting", "phases": {}, "layers": {}}
        self._last = 0.0

    def __call__(self, phase: str, done: int, total: int) -> None:
        self.beat.check()  # no database round trip: stop at once if the lease is gone
        if time.monotonic() > self.deadline:
            raise JobTimedOut(f"the job ran longer than {self.timeout:g} s (job_timeout_seconds)")
        self.state["phase"] = phase
        self.state["phases"][phase] = {"done": int(done), "total": int(total)}
        now = time.monotonic()
        if now - self._last >= self.interval or done >= total:
            self.flush()

    def note(self, phase: str, **extra: Any) -> None:
        self.state["phase"] = phase
        self.state.update(extra)
        self.flush()

    def flush(self) -> None:
        self._last = time.monotonic()
        lease = self.lease
        with self.runner.registry.db.session() as s:
            if not _transition(s, lease, progress=dict(self.state), heartbeat_at=utcnow()):
                self.beat.lost.set()
                raise LeaseLost(f"job {lease.job_id}: attempt {lease.attempt} lost its lease")
            cancel = s.scalar(select(Job.cancel_requested).where(Job.id == lease.job_id))
        self.beat.renewed()
        if cancel:
            raise JobCancelled(f"job {lease.job_id} was cancelled")
        if self.runner.stopping:
            raise _Interrupted()


class _Heartbeat(threading.Thread):
    """Renews the lease every quarter lease. The job stops (self-fencing) when a renewal finds
    the lease taken, or when none succeeded for 3/4 of a lease: by then the reaper of another
    runner may be about to re-queue it, and a stalled runner must not write on after that."""

    def __init__(self, runner: _Runner, lease: Lease) -> None:
        super().__init__(name=f"tinysub-heartbeat-{lease.job_id}", daemon=True)
        self.runner, self.lease = runner, lease
        self.lease_seconds = runner.registry.settings.job_lease_seconds
        self.done = threading.Event()
        self.lost = threading.Event()
        self._renewed = time.monotonic()

    def renewed(self) -> None:
        self._renewed = time.monotonic()

    def check(self) -> None:
        if self.lost.is_set():
            raise LeaseLost(f"job {self.lease.job_id}: another runner took it")
        if time.monotonic() - self._renewed > 0.75 * self.lease_seconds:
            self.lost.set()
            raise LeaseLost(f"job {self.lease.job_id}: no heartbeat for 3/4 of the lease")

    def run(self) -> None:
        period = max(0.5, self.lease_seconds / 4)
        while not self.done.wait(period):
            try:
                with self.runner.registry.db.session() as s:
                    held = _transition(s, self.lease, heartbeat_at=utcnow())
            except Exception:  # noqa: BLE001 - a missed beat is retried next period
                log.warning("heartbeat of job %s failed", self.lease.job_id, exc_info=True)
                continue
            if not held:
                self.lost.set()
                return
            self.renewed()
