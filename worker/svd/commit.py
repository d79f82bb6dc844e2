"""Stage 4 of a basis computation: hash what was written, write each basis' manifest, and
remove the arrays of bases that never got one when anything fails.

Why the manifest goes last: a basis without one is invisible (nothing opens or serves it), so
a crash at any point leaves either a finished basis or removable debris, never a half basis.
The manifest's fields are typed here (`BasisMeta`, `LayerSpec`); on disk they are the same
sorted JSON keys as ever.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NotRequired, TypedDict

from storage.basis import BasisStore, BasisWriter
from storage.trajectory import TrajectoryStore
from storage.vocabulary import BasisKind, BasisMode, BasisScope, SvdMethod
from worker.executors import Executor
from worker.svd.gram import SmallSolve
from worker.svd.phases import Phases
from worker.svd.plan import BasisRequest, Plan
from worker.svd.project import options_json
from worker.svd.solve import Solves
from worker.svd.tasks import HashTask, SourceRows, hash_layer


class LayerSpec(TypedDict):
    """A layer's entry for `BasisWriter.commit`: its spectrum, its hash and, where the kernel
    could measure it, the trajectory's extent along each direction."""

    singular_values: list[float]
    energy: list[float]
    total_energy: float
    sha256: str
    extent: NotRequired[list[float]]


class SourceMeta(TypedDict):
    url: str
    label: str
    rows: list[int]
    ref_row: int | None


class BasisMeta(TypedDict):
    """What the engine records in a basis' manifest, before the request's own `meta` (which
    may add keys such as tasks and held_out, or override these)."""

    kind: BasisKind
    mode: BasisMode
    scope: BasisScope
    requested_rank: int
    rcond: float
    method: SvdMethod
    method_params: dict[str, Any]
    layout: dict[str, Any]
    model_name: str | None
    revision: str | None
    sources: list[SourceMeta]
    members: list[int] | None
    inputs_digest: str


@contextmanager
def discard_on_failure(writers: Sequence[BasisWriter]) -> Iterator[None]:
    """On any failure (interrupts too), remove the arrays of every basis that has no manifest
    yet, so nothing half-written lingers; committed ones are left alone. Best effort: the
    storage that just failed may fail again."""
    try:
        yield
    except BaseException:
        for w in writers:
            w.discard()
        raise


def commit(
    plan: Plan,
    solves: Solves,
    writers: Sequence[BasisWriter],
    executor: Executor,
    phases: Phases,
) -> list[BasisStore]:
    """Hash every written layer (phase and timing: hash), then write each basis' manifest."""
    sha_of = hash_layers(plan, writers, executor, phases)
    bases = []
    for req, per_group, w in zip(plan.requests, solves, writers, strict=True):
        layers = {g: layer_spec(per_group[g], sha_of[w.url, g]) for g in plan.groups}
        bases.append(w.commit(layers, {**basis_meta(plan, req), **req.meta}))
    return bases


def hash_layers(
    plan: Plan, writers: Sequence[BasisWriter], executor: Executor, phases: Phases
) -> dict[tuple[str, str], str]:
    """sha256 of every (basis URL, group) as stored, computed on the workers."""
    with phases.timed("hash"):
        tasks = [
            HashTask(w.url, g, plan.store.chunk_cols, options_json(req.storage_options))
            for req, w in zip(plan.requests, writers, strict=True)
            for g in plan.groups
        ]
        shas = executor.map(hash_layer, tasks, progress=phases.tick("hash", len(tasks)))
        return {(h.url, h.group): s for h, s in zip(tasks, shas, strict=True)}


def layer_spec(sol: SmallSolve, sha256: str) -> LayerSpec:
    """A layer's manifest entry from its small solve and the hash of its V."""
    spec = LayerSpec(
        singular_values=sol.singular_values.tolist(),
        energy=sol.energy.tolist(),
        total_energy=sol.total_energy,
        sha256=sha256,
    )
    if sol.extent is not None:  # theta's scale under the default training rule
        spec["extent"] = sol.extent.tolist()
    return spec


def basis_meta(plan: Plan, req: BasisRequest) -> BasisMeta:
    """The engine's part of a basis' manifest: how it was computed and from what."""
    return BasisMeta(
        kind=req.kind,
        mode=plan.mode,
        scope=plan.scope,
        requested_rank=req.rank,
        rcond=plan.rcond,
        method=plan.method.name,
        method_params=plan.method.params(),
        layout=plan.layout.to_dict(),
        model_name=plan.store.model_name,
        revision=plan.store.revision,
        sources=[source_meta(s) for s in plan.sources],
        members=list(req.members) if req.members is not None else None,
        inputs_digest=inputs_digest(plan.sources, req.members, plan.mode, plan.scope),
    )


def source_meta(s: SourceRows) -> SourceMeta:
    return SourceMeta(url=s.url, label=s.label, rows=list(s.rows), ref_row=s.ref_row)


def inputs_digest(
    sources: Sequence[SourceRows],
    members: Sequence[int] | None,
    mode: BasisMode | str,
    scope: BasisScope | str,
) -> str:
    """Identity of a basis' inputs: store rows (by their committed sha256) and parameters.
    A basis is stale when the digest of its inputs today differs from the one it recorded."""
    h = hashlib.sha256()
    h.update(
        json.dumps(
            {
                "mode": mode,
                "scope": scope,
                "members": list(members) if members is not None else None,
            }
        ).encode()
    )
    for s in sources:
        store = TrajectoryStore.open(s.url, storage_options=s.storage_options)
        rows = store.rows
        for r in sorted(set(s.rows) | ({s.ref_row} if s.ref_row is not None else set())):
            h.update(json.dumps([s.label, r, rows[r].sha256], sort_keys=True).encode())
    return h.hexdigest()
