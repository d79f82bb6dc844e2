"""The durable job runner: jobs live in the database, threads in the app run them.

A job is claimed with a conditional UPDATE (pending -> running, attempts + 1), so two runners
never take the same job. The claim is a lease: (owner, attempts) while `running` fences every
later write, so a runner whose job was re-queued and taken by another (its heartbeat went stale)
changes nothing and deletes nothing: its heartbeat, progress, finish, failure and re-queue are
all conditional updates on the lease (`_transition`), and it stops at its next progress step.
While it runs, a heartbeat thread refreshes `heartbeat_at` and the progress callback flushes
progress and checks for cancellation and for the lease.

Only the holder of the runner lock (services/runner_lock.py: one process per database) runs
jobs; on taking the lock it re-queues every job left `running` (their runner is gone). Jobs
whose heartbeat is older than the lease are re-queued at any time. A re-run first looks for a
basis the dead run had already committed (same registry uid in the manifest, every layer
re-verified); otherwise it recomputes from scratch, overwriting the partial output. A basis
becomes `ready`, and `latest` moves to it, in one transaction, and only after its store was
committed with a sha256 for every layer.

A recompute job (kind 'recompute', services/recompute.py) has no basis: it selects bases and
digests their inputs with a progress step per basis (so cancel, shutdown, a lost lease and the
timeout stop it as they stop a basis job), then queues its basis jobs in the transaction that
marks it succeeded: a recompute that did not succeed queued nothing.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update

from services import quotas, recompute
from services.bases import move_latest, spec_for
from services.compute import BasisSpec, committed, compute
from services.context import Registry
from services.models import Basis, Job, utcnow
from services.runner_lock import RunnerLock
from services.schemas import RecomputeRequest
from storage.basis import BasisStore
from storage.errors import JobTimedOut, StorageError, TinysubError
from storage.layout import Layout
from storage.objects import Location
from storage.vocabulary import BasisStatus, JobKind, JobStatus

log = logging.getLogger(__name__)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class JobCancelled(Exception):
    """Raised inside a running job when a cancel was requested."""


class _Interrupted(Exception):
    """Raised inside a running job when the runner is stopping: the job is re-queued."""


class LeaseLost(Exception):
    """Raised inside a running job whose lease another runner took: stop, write nothing."""


@dataclass(frozen=True)
class Lease:
    """One claim of a job. (owner, attempt) is unique per claim: every claim adds an attempt,
    and the only hand-back that takes one away (`_requeue` on stop) is by a stopping runner,
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


class ExecutorPool:
    """One executor per name, created on first use and kept for the app's lifetime (starting a
    Dask client or joining a Ray cluster per job would cost seconds)."""

    def __init__(self, registry: Registry) -> None:
        self.settings = registry.settings
        self._lock = threading.Lock()
        self._executors: dict[str, Any] = {}

    def get(self, name: str):
        from worker.executors import make_executor

        with self._lock:
            if name not in self._executors:
                s = self.settings
                address = s.executor_address if name == s.executor else None
                self._executors[name] = make_executor(name, address, s.executor_workers)
            return self._executors[name]

    def discard(self, name: str) -> None:
        """Drop an executor after an unexpected failure (its cluster may be gone)."""
        with self._lock:
            ex = self._executors.pop(name, None)
        if ex is not None:
            try:
                ex.close()
            except Exception:  # noqa: BLE001 - a broken executor may fail to close
                log.warning("closing executor %s failed", name, exc_info=True)

    def close(self) -> None:
        for name in list(self._executors):
            self.discard(name)


class _Progress:
    """The kernels' progress(phase, done, total) callback for one job."""

    def __init__(
        self, runner: JobRunner, lease: Lease, beat: _Heartbeat, interval: float = 0.5
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

    def __init__(self, runner: JobRunner, lease: Lease) -> None:
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
        """Put `running` jobs back to `pending`: all of them (on taking the runner lock: their
        runner is gone) or those whose heartbeat is older than `older_than` seconds. Each job
        moves by a conditional update on the lease it was read with, so a job that finished,
        or whose heartbeat was renewed, in between is left alone."""
        requeued = []
        with self.registry.db.session() as s:
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

    def claim(self) -> int | None:
        with self.registry.db.session() as s:
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
                        owner=self.owner,
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
                    with self._leases_guard:
                        self._leases[job_id] = Lease(job_id, self.owner, attempt)
                    return job_id
        return None

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
    def _load(self, job_id: int) -> _Claimed:
        with self.registry.db.session() as s:
            job = s.get(Job, job_id)
            spec = None
            kind = JobKind(job.kind)
            if kind == JobKind.BASIS:
                spec = spec_for(self.registry, s, s.get(Basis, job.basis_id))
            return _Claimed(
                kind, job.attempts, job.cancel_requested, spec, job.params, job.token_id
            )

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
        settings = self.registry.settings
        with self._leases_guard:
            lease = self._leases.pop(job_id, None)
        if lease is None:
            raise ValueError(f"job {job_id} was not claimed by this runner")
        try:
            claimed = self._load(job_id)
        except TinysubError as exc:
            return self._finish_failed(lease, None, exc.code, str(exc))
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
                return self._recompute(lease, claimed, progress)
            store = self._committed_or_computed(job_id, spec, attempts, executor_name, progress)
            return self._finish_ready(lease, spec, store, progress)
        except LeaseLost as exc:
            # Another runner has the job now: its output directory is that runner's.
            log.warning("%s; stopping and leaving it to its new runner", exc)
            return "lost"
        except JobCancelled:
            return self._finish_failed(
                lease, spec, "cancelled", "cancelled by request", status=JobStatus.CANCELLED
            )
        except _Interrupted:
            self._requeue(lease, spend_attempt=False)
            return JobStatus.PENDING
        except TinysubError as exc:
            return self._finish_failed(lease, spec, exc.code, str(exc))
        except Exception as exc:  # noqa: BLE001 - a worker or cluster failure: retry
            log.exception("job %s failed unexpectedly (attempt %s)", job_id, attempts)
            if executor_name is not None:
                self.executors.discard(executor_name)
            message = f"{type(exc).__name__}: {exc}"
            if attempts < settings.job_max_attempts:
                self._requeue(lease, spend_attempt=True, error=message)
                return JobStatus.PENDING
            return self._finish_failed(lease, spec, "tinysub_error", message)
        finally:
            beat.done.set()

    def _committed_or_computed(
        self,
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
            executor=self.executors.get(executor_name),
            block_cols=self.registry.settings.block_cols,
            progress=progress,
        )

    def _recompute(self, lease: Lease, claimed: _Claimed, progress: _Progress) -> str:
        """Run a recompute job (services.recompute): select and decide with a progress step
        per basis, then queue the basis jobs in the transaction that marks it succeeded, under
        its token's cap. Recompute jobs queue one at a time in this process, which is the only
        one running jobs (the runner lock)."""
        reg = self.registry
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
            self.notify()
        return JobStatus.SUCCEEDED

    def _check_committed(self, spec: BasisSpec, store: BasisStore) -> None:
        groups = Layout.from_dict(spec.layout).group_names
        if list(store.layers) != groups:
            raise StorageError(
                f"basis at {store.url} has layers {list(store.layers)}, expected {groups}"
            )
        for info in store.layers.values():
            if not _SHA256.fullmatch(info.sha256 or ""):
                raise StorageError(f"layer {info.name!r} of {store.url} has no sha256")

    def _finish_ready(
        self, lease: Lease, spec: BasisSpec, store: BasisStore, progress: _Progress
    ) -> str:
        self._check_committed(spec, store)
        layers = [info.to_dict() for info in store.layers.values()]
        reg = self.registry
        done = {
            **progress.state,
            "phase": "done",
            "layers": {i["name"]: "checksummed" for i in layers},
        }
        with reg.locks(("alias", spec.task_id, spec.kind)), reg.db.session() as s:
            if not _transition(
                s,
                lease,
                status=JobStatus.SUCCEEDED,
                finished_at=utcnow(),
                error=None,
                error_code=None,
                progress=done,
            ):
                log.warning("job %s was taken over while it ran; leaving it", lease.job_id)
                return "lost"
            basis = s.get(Basis, spec.basis_id)
            basis.status = BasisStatus.READY
            basis.layers = layers
            basis.inputs_digest = store.manifest.get("inputs_digest")
            basis.ready_at = utcnow()
            basis.error = None
            move_latest(s, basis)
        return JobStatus.SUCCEEDED

    def _finish_failed(
        self,
        lease: Lease,
        spec: BasisSpec | None,
        code: str,
        message: str,
        status: JobStatus = JobStatus.FAILED,
    ) -> str:
        with self.registry.db.session() as s:
            if not _transition(
                s, lease, status=status, error=message, error_code=code, finished_at=utcnow()
            ):
                # Another runner has the job (and may have committed the basis): touch nothing.
                log.warning("job %s was taken over; not failing it", lease.job_id)
                return "lost"
            basis_id = s.scalar(select(Job.basis_id).where(Job.id == lease.job_id))
            _set_basis(s, basis_id, status=BasisStatus.FAILED, error=message)
        if spec is not None:
            # Nothing half-written stays behind (there is no manifest, so nothing would serve
            # it anyway).
            try:
                Location.from_url(spec.url, spec.storage_options).delete(recursive=True)
            except Exception:  # noqa: BLE001
                log.warning("could not remove %s", spec.url, exc_info=True)
        return status

    def _requeue(self, lease: Lease, *, spend_attempt: bool, error: str | None = None) -> None:
        values: dict[str, Any] = {"status": JobStatus.PENDING, "owner": None}
        if not spend_attempt:
            values["attempts"] = Job.attempts - 1
        if error:
            values["error"] = error
        with self.registry.db.session() as s:
            if _transition(s, lease, **values):
                basis_id = s.scalar(select(Job.basis_id).where(Job.id == lease.job_id))
                _set_basis(s, basis_id, status=BasisStatus.PENDING)
