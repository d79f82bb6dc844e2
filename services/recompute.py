"""Batch recomputation: one new version per selected (task, kind), from the parameters of its
newest version. `stale_only` keeps the bases whose inputs changed since they were built: the
`inputs_digest` recorded in the basis (sha256 of every input row and the parameters) differs
from the digest of the inputs it would read today (new rows, a re-registered store)."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.bases import create_basis_job, spec_for
from services.compute import current_inputs_digest
from services.context import Registry
from services.models import Basis, Task
from services.schemas import RecomputeRequest
from storage.errors import TinysubError


def _item(basis: Basis, reason: str, version: int | None = None, job_id: int | None = None):
    return {
        "task_id": basis.task_id,
        "kind": basis.kind,
        "version": version if version is not None else basis.version,
        "previous_version": basis.version,
        "job_id": job_id,
        "reason": reason,
    }


def recompute(reg: Registry, session: Session, req: RecomputeRequest) -> dict:
    """Queue (or, with dry_run, list) the recomputations the filters select. Caller commits."""
    q = select(Basis)
    if req.task_ids is not None:
        q = q.where(Basis.task_id.in_(req.task_ids))
    if req.kinds is not None:
        q = q.where(Basis.kind.in_(req.kinds))
    if req.model is not None:
        q = q.join(Task, Task.id == Basis.task_id).where(Task.model == req.model)
    newest: dict[tuple[str, str], Basis] = {}
    for b in session.scalars(q.order_by(Basis.task_id, Basis.kind, Basis.version)):
        newest[(b.task_id, b.kind)] = b
    queued, skipped = [], []
    for basis in newest.values():
        if basis.status in ("pending", "running"):
            skipped.append(_item(basis, f"version {basis.version} is already {basis.status}"))
            continue
        reason = "requested"
        if req.stale_only:
            if basis.kind == "random":
                skipped.append(_item(basis, "a random basis reads no inputs"))
                continue
            if basis.status == "ready":
                try:
                    current = current_inputs_digest(spec_for(reg, session, basis))
                except TinysubError as exc:
                    skipped.append(_item(basis, f"inputs cannot be read: {exc}"))
                    continue
                if current == basis.inputs_digest:
                    skipped.append(_item(basis, "up to date"))
                    continue
                reason = "inputs changed"
            else:
                reason = f"version {basis.version} {basis.status}"
        params = dict(basis.params, uid=uuid.uuid4().hex)
        if params.get("executor") not in ("local", reg.settings.executor):
            params["executor"] = reg.settings.executor
        if req.dry_run:
            queued.append(_item(basis, reason, version=basis.version + 1))
            continue
        new, job = create_basis_job(reg, session, basis.task_id, basis.kind, params)
        queued.append(_item(basis, reason, version=new.version, job_id=job.id))
    return {"queued": queued, "skipped": skipped}
