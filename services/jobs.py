"""The durable job runner: jobs live in the database, threads in the app run them.

A job is claimed with a conditional UPDATE (pending -> running, attempts + 1), so two runners
never take the same job. While it runs, a heartbeat thread refreshes `heartbeat_at` and the
progress callback flushes progress and checks for cancellation. On start-up, jobs left `running`
by a process that died are re-queued; jobs whose heartbeat is older than the lease are re-queued
at any time (another process died). A re-run first looks for a basis the dead run had already
committed (same registry uid in the manifest, every layer re-verified); otherwise it recomputes
from scratch, overwriting the partial output. A basis becomes `ready`, and `latest` moves to it,
in one transaction, and only after its store was committed with a sha256 for every layer.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update

from services.bases import move_latest, spec_for
from services.compute import BasisSpec, committed, compute
from services.context import Registry
from services.models import Basis, Job, utcnow
from storage.basis import BasisStore
from storage.errors import StorageError, TinysubError
from storage.layout import Layout
from storage.objects import Location

log = logging.getLogger(__name__)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class JobCancelled(Exception):
    """Raised inside a running job when a cancel was requested."""


class _Interrupted(Exception):
    """Raised inside a running job when the runner is stopping: the job is re-queued."""


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

    def __init__(self, runner: JobRunner, job_id: int, interval: float = 0.5) -> None:
        self.runner = runner
        self.job_id = job_id
        self.interval = interval
        self.state: dict[str, Any] = {"phase": "starting", "phases": {}, "layers": {}}
        self._last = 0.0

    def __call__(self, phase: str, done: int, total: int) -> None:
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
        with self.runner.registry.db.session() as s:
            s.execute(
                update(Job)
                .where(Job.id == self.job_id)
                .values(progress=dict(self.state), heartbeat_at=utcnow())
            )
            cancel = s.scalar(select(Job.cancel_requested).where(Job.id == self.job_id))
        if cancel:
            raise JobCancelled(f"job {self.job_id} was cancelled")
        if self.runner.stopping:
            raise _Interrupted()


class _Heartbeat(threading.Thread):
    def __init__(self, runner: JobRunner, job_id: int) -> None:
        super().__init__(name=f"tinysub-heartbeat-{job_id}", daemon=True)
        self.runner, self.job_id = runner, job_id
        self.done = threading.Event()

    def run(self) -> None:
        period = max(0.5, self.runner.registry.settings.job_lease_seconds / 4)
        while not self.done.wait(period):
            try:
                with self.runner.registry.db.session() as s:
                    s.execute(
                        update(Job)
                        .where(Job.id == self.job_id, Job.owner == self.runner.owner)
                        .values(heartbeat_at=utcnow())
                    )
            except Exception:  # noqa: BLE001 - a missed beat is retried next period
                log.warning("heartbeat of job %s failed", self.job_id, exc_info=True)


class JobRunner:
    """Runs pending jobs: `start()` for background threads, `run_pending()` to run inline."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.owner = uuid.uuid4().hex[:16]
        self.executors = ExecutorPool(registry)
        self.stopping = False
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------------------- lifecycle
    def start(self) -> None:
        requeued = self.requeue_orphans()
        if requeued:
            log.info("re-queued jobs left running by a stopped service: %s", requeued)
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
        for t in self._threads:
            t.join(timeout)
        self._threads = []
        self.executors.close()

    def notify(self) -> None:
        """Wake the runner threads (a job was queued)."""
        self._wake.set()

    def _loop(self) -> None:
        s = self.registry.settings
        last_reap = time.monotonic()
        while not self._stop.is_set():
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
        """Put `running` jobs back to `pending`: all of them (start-up: this database has one
        runner process) or those whose heartbeat is older than `older_than` seconds."""
        with self.registry.db.session() as s:
            q = select(Job).where(Job.status == "running")
            if older_than is not None:
                q = q.where(Job.heartbeat_at < utcnow() - timedelta(seconds=older_than))
            jobs = s.scalars(q).all()
            for job in jobs:
                job.status = "pending"
                job.owner = None
                job.progress = {**(job.progress or {}), "phase": "requeued"}
                s.execute(update(Basis).where(Basis.id == job.basis_id).values(status="pending"))
            return [j.id for j in jobs]

    def claim(self) -> int | None:
        with self.registry.db.session() as s:
            candidates = s.scalars(
                select(Job.id).where(Job.status == "pending").order_by(Job.id).limit(8)
            ).all()
            for job_id in candidates:
                now = utcnow()
                res = s.execute(
                    update(Job)
                    .where(Job.id == job_id, Job.status == "pending")
                    .values(
                        status="running",
                        owner=self.owner,
                        attempts=Job.attempts + 1,
                        started_at=now,
                        heartbeat_at=now,
                    )
                )
                if res.rowcount == 1:
                    basis_id = s.scalar(select(Job.basis_id).where(Job.id == job_id))
                    s.execute(update(Basis).where(Basis.id == basis_id).values(status="running"))
                    s.commit()
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
    def _spec(self, job_id: int) -> tuple[BasisSpec, int, bool]:
        with self.registry.db.session() as s:
            job = s.get(Job, job_id)
            spec = spec_for(self.registry, s, s.get(Basis, job.basis_id))
            return spec, job.attempts, job.cancel_requested

    def run_job(self, job_id: int) -> str:
        """Run one claimed job to its end; returns its final status."""
        settings = self.registry.settings
        try:
            spec, attempts, cancel = self._spec(job_id)
        except TinysubError as exc:
            return self._finish_failed(job_id, None, exc.code, str(exc))
        progress = _Progress(self, job_id)
        beat = _Heartbeat(self, job_id)
        beat.start()
        executor_name = spec.params.get("executor", "local")
        try:
            if cancel:
                raise JobCancelled()
            if attempts > settings.job_max_attempts:
                raise StorageError(
                    f"gave up after {attempts - 1} attempts (the service or its workers "
                    "stopped during each)"
                )
            store = committed(spec)
            if store is not None:
                problems = store.verify()
                if problems:
                    log.warning(
                        "job %s: committed basis fails checks %s; recomputing", job_id, problems
                    )
                    store = None
                else:
                    progress.note("resumed")
            if store is None:
                progress.note("computing", attempt=attempts)
                store = compute(
                    spec,
                    executor=self.executors.get(executor_name),
                    block_cols=settings.block_cols,
                    progress=progress,
                )
            return self._finish_ready(job_id, spec, store, progress)
        except JobCancelled:
            return self._finish_failed(
                job_id, spec, "cancelled", "cancelled by request", status="cancelled"
            )
        except _Interrupted:
            self._requeue(job_id, spend_attempt=False)
            return "pending"
        except TinysubError as exc:
            return self._finish_failed(job_id, spec, exc.code, str(exc))
        except Exception as exc:  # noqa: BLE001 - a worker or cluster failure: retry
            log.exception("job %s failed unexpectedly (attempt %s)", job_id, attempts)
            self.executors.discard(executor_name)
            message = f"{type(exc).__name__}: {exc}"
            if attempts < settings.job_max_attempts:
                self._requeue(job_id, spend_attempt=True, error=message)
                return "pending"
            return self._finish_failed(job_id, spec, "tinysub_error", message)
        finally:
            beat.done.set()

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
        self, job_id: int, spec: BasisSpec, store: BasisStore, progress: _Progress
    ) -> str:
        self._check_committed(spec, store)
        layers = [info.to_dict() for info in store.layers.values()]
        reg = self.registry
        with reg.locks(("alias", spec.task_id, spec.kind)), reg.db.session() as s:
            job = s.get(Job, job_id)
            if job.status != "running" or job.owner != self.owner:
                log.warning("job %s was taken over while it ran; leaving it", job_id)
                return job.status
            basis = s.get(Basis, spec.basis_id)
            basis.status = "ready"
            basis.layers = layers
            basis.inputs_digest = store.manifest.get("inputs_digest")
            basis.ready_at = utcnow()
            basis.error = None
            job.status = "succeeded"
            job.finished_at = utcnow()
            job.error = job.error_code = None
            job.progress = {
                **progress.state,
                "phase": "done",
                "layers": {i["name"]: "checksummed" for i in layers},
            }
            move_latest(s, basis)
        return "succeeded"

    def _finish_failed(
        self,
        job_id: int,
        spec: BasisSpec | None,
        code: str,
        message: str,
        status: str = "failed",
    ) -> str:
        with self.registry.db.session() as s:
            job = s.get(Job, job_id)
            job.status = status
            job.error, job.error_code = message, code
            job.finished_at = utcnow()
            basis = s.get(Basis, job.basis_id)
            basis.status = "failed"
            basis.error = message
        if spec is not None:
            # Nothing half-written stays behind (there is no manifest, so nothing would serve
            # it anyway).
            try:
                Location.from_url(spec.url, spec.storage_options).delete(recursive=True)
            except Exception:  # noqa: BLE001
                log.warning("could not remove %s", spec.url, exc_info=True)
        return status

    def _requeue(self, job_id: int, *, spend_attempt: bool, error: str | None = None) -> None:
        with self.registry.db.session() as s:
            job = s.get(Job, job_id)
            job.status = "pending"
            job.owner = None
            if not spend_attempt:
                job.attempts = max(0, job.attempts - 1)
            if error:
                job.error = error
            s.execute(update(Basis).where(Basis.id == job.basis_id).values(status="pending"))
