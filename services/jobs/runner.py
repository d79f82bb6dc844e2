"""The job runner: its threads, the runner lock, and one claimed job run to its end.

Only the holder of the runner lock (services/runner_lock.py: one process per database) runs
jobs; on taking the lock it re-queues every job left `running` (their runner is gone). Jobs
whose heartbeat is older than the lease are re-queued at any time. `run_job` decides how an
attempt ends: succeeded, failed, cancelled, re-queued (interrupted, or an unexpected failure
with attempts left) or "lost" (another runner holds the job now: write nothing).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any

from services.context import Registry
from services.jobs.finish import finish_failed, finish_ready, requeue
from services.jobs.heartbeat import _Heartbeat, _Progress
from services.jobs.lease import JobCancelled, Lease, LeaseLost, _Interrupted
from services.jobs.pool import ExecutorPool
from services.jobs.queue import claim, requeue_orphans
from services.jobs.work import committed_or_computed, load, run_recompute
from services.runner_lock import RunnerLock
from storage.errors import StorageError, TinysubError
from storage.vocabulary import JobStatus

log = logging.getLogger(__name__)


class JobRunner:
    """Runs pending jobs: `start()` for background threads, `run_pending()` to run inline."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.owner = uuid.uuid4().hex[:16]
        self.executors = ExecutorPool(registry)
        self.lock = RunnerLock(registry.db)
        self.metrics: Any = None  # services.observability.Metrics, set by the app
        self.stopping = False
        self._leases: dict[int, Lease] = {}
        self._leases_guard = threading.Lock()
        self._leader = threading.Event()  # set while this process holds the runner lock
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Run jobs in background threads once this process holds the runner lock (at once
        if it is free; otherwise as soon as the holder stops or dies)."""
        self._take_lock()
        keeper = threading.Thread(target=self._keep_lock, name="tinysub-jobs-lock", daemon=True)
        keeper.start()
        self._threads.append(keeper)
        for i in range(self.registry.settings.job_workers):
            t = threading.Thread(target=self._loop, name=f"tinysub-jobs-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout: float = 60.0) -> None:
        """Stop taking jobs; a running job is interrupted at its next progress step and
        re-queued, to be resumed by the next start."""
        self.stopping = True
        self._stop.set()
        self._wake.set()
        self._leader.set()  # wake loops waiting for the lock, so they see the stop
        for t in self._threads:
            t.join(timeout)
        self._threads = []
        self.executors.close()
        self.lock.release()

    @property
    def is_leader(self) -> bool:
        return self.lock.held and not self.stopping

    def _take_lock(self) -> None:
        try:
            got = self.lock.try_acquire()
        except Exception:  # noqa: BLE001 - the database may be briefly unavailable
            log.warning("taking the job runner lock failed", exc_info=True)
            return
        if not got:
            return
        # The only runner now: whatever is `running` was left by one that is gone.
        requeued = self.requeue_orphans()
        if requeued:
            log.info("re-queued jobs left running by a stopped runner: %s", requeued)
        self._leader.set()
        self._wake.set()

    def _keep_lock(self) -> None:
        poll = self.registry.settings.job_poll_seconds
        while not self._stop.wait(max(poll, 0.2)):
            if self.lock.held:
                if not self.lock.still_held():
                    log.warning("lost the job runner lock; running no new jobs until retaken")
                    self._leader.clear()
            else:
                self._take_lock()

    def notify(self) -> None:
        """Wake the runner threads (a job was queued)."""
        self._wake.set()

    def _loop(self) -> None:
        s = self.registry.settings
        last_reap = time.monotonic()
        while not self._stop.is_set():
            if not self._leader.is_set():
                self._leader.wait(s.job_poll_seconds)
                continue
            try:
                if time.monotonic() - last_reap > s.job_lease_seconds / 2:
                    last_reap = time.monotonic()
                    self.requeue_orphans(older_than=s.job_lease_seconds)
                job_id = self.claim()
            except Exception:  # noqa: BLE001 - the database may be briefly unavailable
                log.exception("claiming a job failed")
                job_id = None
            if job_id is None:
                self._wake.wait(s.job_poll_seconds)
                self._wake.clear()
                continue
            try:
                self.run_job(job_id)
            except Exception:  # noqa: BLE001 - e.g. the database went away mid-job
                # The job stays `running`; its heartbeat stops, so the lease re-queues it.
                log.exception("job %s could not be run or recorded", job_id)

    # ----------------------------------------------------------------------------- queue
    def requeue_orphans(self, *, older_than: float | None = None) -> list[int]:
        """Put orphaned `running` jobs back to `pending` (services.jobs.queue)."""
        return requeue_orphans(self.registry, older_than=older_than)

    def claim(self) -> int | None:
        """Claim the oldest pending job for this runner; its id, or None."""
        lease = claim(self.registry, self.owner)
        if lease is None:
            return None
        with self._leases_guard:
            self._leases[lease.job_id] = lease
        return lease.job_id

    def run_pending(self, max_jobs: int | None = None) -> list[int]:
        """Run queued jobs in this thread until none is left; returns their ids."""
        done = []
        while max_jobs is None or len(done) < max_jobs:
            job_id = self.claim()
            if job_id is None:
                break
            self.run_job(job_id)
            done.append(job_id)
        return done

    # ------------------------------------------------------------------------------- run
    def run_job(self, job_id: int) -> str:
        """Run one job this runner claimed to its end; returns its final status."""
        start = time.monotonic()
        seen = {"kind": "unknown", "status": "error"}  # "error": the run itself raised
        try:
            seen["status"] = self._run_job(job_id, seen)
            return seen["status"]
        finally:
            if self.metrics is not None:
                self.metrics.observe_job(seen["kind"], seen["status"], time.monotonic() - start)

    def _run_job(self, job_id: int, seen: dict[str, str]) -> str:
        reg = self.registry
        settings = reg.settings
        with self._leases_guard:
            lease = self._leases.pop(job_id, None)
        if lease is None:
            raise ValueError(f"job {job_id} was not claimed by this runner")
        try:
            claimed = load(reg, job_id)
        except TinysubError as exc:
            return finish_failed(reg, lease, None, exc.code, str(exc))
        spec, attempts = claimed.spec, claimed.attempts
        seen["kind"] = spec.kind if spec is not None else claimed.kind
        beat = _Heartbeat(self, lease)
        progress = _Progress(self, lease, beat)
        beat.start()
        executor_name = (spec.params.executor or "local") if spec is not None else None
        try:
            if claimed.cancel:
                raise JobCancelled()
            if attempts > settings.job_max_attempts:
                raise StorageError(
                    f"gave up after {attempts - 1} attempts (the service or its workers "
                    "stopped during each)"
                )
            if spec is None:
                return run_recompute(reg, lease, claimed, progress, self.notify)
            store = committed_or_computed(
                reg, self.executors, job_id, spec, attempts, executor_name, progress
            )
            return finish_ready(reg, lease, spec, store, progress)
        except LeaseLost as exc:
            # Another runner has the job now: its output directory is that runner's.
            log.warning("%s; stopping and leaving it to its new runner", exc)
            return "lost"
        except JobCancelled:
            return finish_failed(
                reg, lease, spec, "cancelled", "cancelled by request", status=JobStatus.CANCELLED
            )
        except _Interrupted:
            requeue(reg, lease, spend_attempt=False)
            return JobStatus.PENDING
        except TinysubError as exc:
            return finish_failed(reg, lease, spec, exc.code, str(exc))
        except Exception as exc:  # noqa: BLE001 - a worker or cluster failure: retry
            log.exception("job %s failed unexpectedly (attempt %s)", job_id, attempts)
            if executor_name is not None:
                self.executors.discard(executor_name)
            message = f"{type(exc).__name__}: {exc}"
            if attempts < settings.job_max_attempts:
                requeue(reg, lease, spend_attempt=True, error=message)
                return JobStatus.PENDING
            return finish_failed(reg, lease, spec, "tinysub_error", message)
        finally:
            beat.done.set()
