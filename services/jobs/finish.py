"""Ending an attempt of a job, each end a conditional write on its lease: succeeded (the basis
becomes `ready` and `latest` moves to it in one transaction), failed (its half-written output
removed) or handed back to the queue."""

from __future__ import annotations

import logging
import re
from typing import Any

from sqlalchemy import select

from services.bases import move_latest
from services.compute import BasisSpec
from services.context import Registry
from services.jobs.heartbeat import _Progress
from services.jobs.lease import Lease, _set_basis, _transition
from services.models import Basis, Job, utcnow
from storage.basis import BasisStore
from storage.errors import StorageError
from storage.layout import Layout
from storage.objects import Location
from storage.vocabulary import BasisStatus, JobStatus

log = logging.getLogger(__name__)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _check_committed(spec: BasisSpec, store: BasisStore) -> None:
    groups = Layout.from_dict(spec.layout).group_names
    if list(store.layers) != groups:
        raise StorageError(
            f"basis at {store.url} has layers {list(store.layers)}, expected {groups}"
        )
    for info in store.layers.values():
        if not _SHA256.fullmatch(info.sha256 or ""):
            raise StorageError(f"layer {info.name!r} of {store.url} has no sha256")


def finish_ready(
    registry: Registry, lease: Lease, spec: BasisSpec, store: BasisStore, progress: _Progress
) -> str:
    """Mark the job succeeded and its committed basis `ready` (moving `latest`) in one
    transaction; "lost" if another runner holds the job now."""
    _check_committed(spec, store)
    layers = [info.to_dict() for info in store.layers.values()]
    done = {
        **progress.state,
        "phase": "done",
        "layers": {i["name"]: "checksummed" for i in layers},
    }
    with registry.locks(("alias", spec.task_id, spec.kind)), registry.db.session() as s:
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


def finish_failed(
    registry: Registry,
    lease: Lease,
    spec: BasisSpec | None,
    code: str,
    message: str,
    status: JobStatus = JobStatus.FAILED,
) -> str:
    """Mark the job (and its basis) failed or cancelled and remove its output; "lost" if
    another runner holds the job now."""
    with registry.db.session() as s:
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


def requeue(
    registry: Registry, lease: Lease, *, spend_attempt: bool, error: str | None = None
) -> None:
    """Hand the job back to the queue (with its basis); an interrupted attempt is not spent."""
    values: dict[str, Any] = {"status": JobStatus.PENDING, "owner": None}
    if not spend_attempt:
        values["attempts"] = Job.attempts - 1
    if error:
        values["error"] = error
    with registry.db.session() as s:
        if _transition(s, lease, **values):
            basis_id = s.scalar(select(Job.basis_id).where(Job.id == lease.job_id))
            _set_basis(s, basis_id, status=BasisStatus.PENDING)
