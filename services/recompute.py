"""Batch recomputation: one new version per selected (task, kind), from the parameters of its
newest version. `stale_only` keeps the bases whose inputs changed since they were built: the
`inputs_digest` recorded in the basis (sha256 of every input row and the parameters) differs
from the digest of the inputs it would read today (new rows, a re-registered store).

POST /v1/recompute only queues a job of kind 'recompute' (digesting every input of thousands of
bases is no work for a request). The job runner (services.jobs) then runs the three steps here:
`select` the newest version of each (task, kind) the filters name, in one short session;
`decide` for each whether to recompute it, digesting its inputs for `stale_only`, one progress
step per basis (so cancel, shutdown, a lost lease and `job_timeout_seconds` stop it between
bases); `queue` the basis jobs in the transaction that marks the recompute job succeeded, so a
recompute that loses its lease or fails queues nothing, and one that succeeded queued all it
reports. A token's jobs are capped (services.quotas): what does not fit is reported as skipped.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from services.bases import create_basis_job, spec_for
from services.basis_params import BasisParams
from services.compute import BasisSpec, current_inputs_digest
from services.context import Registry
from services.models import Basis, Task
from services.schemas import RecomputeRequest
from storage.errors import InvalidInput, TinysubError
from storage.vocabulary import BASIS_ACTIVE, BasisKind, BasisStatus

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class Candidate:
    """The newest version of one (task, kind), as `select` read it."""

    basis_id: int
    task_id: str
    kind: BasisKind
    version: int
    status: BasisStatus
    params: BasisParams | None  # None: the stored parameters cannot be read (params_error)
    inputs_digest: str | None
    spec: BasisSpec | None = None  # what `decide` digests (stale_only, ready, not random)
    spec_error: str | None = None  # why there is no spec: its inputs cannot be found
    params_error: str | None = None


@dataclass(frozen=True)
class Decision:
    candidate: Candidate
    reason: str
    recompute: bool


def _item(c: Candidate, reason: str, version: int | None = None, job_id: int | None = None):
    return {
        "task_id": c.task_id,
        "kind": c.kind,
        "version": version if version is not None else c.version,
        "previous_version": c.version,
        "job_id": job_id,
        "reason": reason,
    }


def select_newest(reg: Registry, session: Session, req: RecomputeRequest) -> list[Candidate]:
    """The newest version of every (task, kind) the filters select, ordered by task and kind,
    with the specs `decide` digests taken now (the digests run without a session)."""
    newest = select(Basis.task_id, Basis.kind, func.max(Basis.version).label("version"))
    if req.task_ids is not None:
        newest = newest.where(Basis.task_id.in_(req.task_ids))
    if req.kinds is not None:
        newest = newest.where(Basis.kind.in_(req.kinds))
    if req.model is not None:
        newest = newest.join(Task, Task.id == Basis.task_id).where(Task.model == req.model)
    top = newest.group_by(Basis.task_id, Basis.kind).subquery()
    q = (
        select(Basis)
        .join(
            top,
            and_(
                Basis.task_id == top.c.task_id,
                Basis.kind == top.c.kind,
                Basis.version == top.c.version,
            ),
        )
        .order_by(Basis.task_id, Basis.kind)
    )
    out = []
    for b in session.scalars(q):
        spec, error, params, params_error = None, None, None, None
        try:
            params = BasisParams.from_json(b.params)
        except InvalidInput as exc:
            params_error = str(exc)
        if req.stale_only and b.status == BasisStatus.READY and b.kind != BasisKind.RANDOM:
            try:
                spec = spec_for(reg, session, b)
            except TinysubError as exc:
                error = str(exc)
        out.append(
            Candidate(
                b.id,
                b.task_id,
                BasisKind(b.kind),
                b.version,
                BasisStatus(b.status),
                params,
                b.inputs_digest,
                spec,
                error,
                params_error,
            )  # fmt: skip
        )
    return out


def decide(
    req: RecomputeRequest, candidates: list[Candidate], progress: Progress
) -> list[Decision]:
    """Whether to recompute each candidate, and why: one progress step per basis (digesting its
    inputs first under `stale_only`)."""
    phase = "digest" if req.stale_only else "select"
    out = []
    for i, c in enumerate(candidates):
        out.append(_decide(req, c))
        progress(phase, i + 1, len(candidates))
    return out


def _decide(req: RecomputeRequest, c: Candidate) -> Decision:
    if c.status in BASIS_ACTIVE:
        return Decision(c, f"version {c.version} is already {c.status}", False)
    if c.params is None:
        return Decision(c, f"version {c.version}'s {c.params_error}", False)
    if not req.stale_only:
        return Decision(c, "requested", True)
    if c.kind == BasisKind.RANDOM:
        return Decision(c, "a random basis reads no inputs", False)
    if c.status != BasisStatus.READY:
        return Decision(c, f"version {c.version} {c.status}", True)
    if c.spec is None:
        return Decision(c, f"inputs cannot be read: {c.spec_error}", False)
    try:
        current = current_inputs_digest(c.spec)
    except TinysubError as exc:
        return Decision(c, f"inputs cannot be read: {exc}", False)
    if current == c.inputs_digest:
        return Decision(c, "up to date", False)
    return Decision(c, "inputs changed", True)


def queue(
    reg: Registry,
    session: Session,
    req: RecomputeRequest,
    decisions: list[Decision],
    *,
    room: int | None,
    token_id: int | None,
) -> dict:
    """Queue a basis job per decision to recompute (none with dry_run) and return the result
    {queued, skipped}. A basis that gained a version, or started one, since `select` read it is
    skipped; so is what does not fit in `room` (the token's cap; None: no cap). Caller commits."""
    queued, skipped = [], []
    for d in decisions:
        c = d.candidate
        if not d.recompute:
            skipped.append(_item(c, d.reason))
            continue
        newest = session.scalars(
            select(Basis)
            .where(Basis.task_id == c.task_id, Basis.kind == c.kind)
            .order_by(Basis.version.desc())
            .limit(1)
        ).first()
        if newest is None or newest.id != c.basis_id:
            version = newest.version if newest is not None else c.version
            skipped.append(_item(c, f"version {version} appeared while the recompute ran"))
            continue
        if newest.status in BASIS_ACTIVE:
            skipped.append(_item(c, f"version {c.version} is already {newest.status}"))
            continue
        if room is not None and len(queued) >= room:
            skipped.append(
                _item(
                    c,
                    "not queued: the token reached max_pending_jobs_per_token "
                    f"({reg.settings.max_pending_jobs_per_token} jobs pending or running); "
                    "recompute again once some have finished",
                )
            )
            continue
        assert c.params is not None  # `_decide` recomputes none without readable parameters
        params = c.params.with_changes(uid=uuid.uuid4().hex)
        if params.executor not in ("local", reg.settings.executor):
            params = params.with_changes(executor=reg.settings.executor)
        if req.dry_run:
            queued.append(_item(c, d.reason, version=c.version + 1))
            continue
        new, job = create_basis_job(reg, session, c.task_id, c.kind, params, token_id=token_id)
        queued.append(_item(c, d.reason, version=new.version, job_id=job.id))
    return {"queued": queued, "skipped": skipped}
