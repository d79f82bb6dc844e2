"""From a basis row to the kernels: which stores, which rows, which call.

`BasisSpec` is a plain snapshot taken from the database (the job runs without a session), and
`compute` produces the committed basis store. task/global/unified/zeroshot go through
worker.svd.engine (the same two-pass code as `task_basis` and `multitask_bases`); random goes
through services.random_basis. The registry's identity of the basis (`registry.uid`) is written
into the manifest, so a job re-run after a crash can recognise a basis it already committed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from services.basis_params import BasisParams
from storage.basis import BasisStore
from storage.errors import NotFound
from storage.layout import Layout
from storage.trajectory import TrajectoryStore
from storage.vocabulary import BasisKind

# Bases labelled by their store URL (as `task_basis` labels them); the others by task ID.
SINGLE_TASK = (BasisKind.TASK, BasisKind.GLOBAL)


@dataclass(frozen=True)
class BasisSpec:
    basis_id: int
    task_id: str
    kind: BasisKind
    version: int
    url: str
    params: BasisParams
    layout: dict[str, Any]
    sources: dict[str, str] = field(default_factory=dict)  # source task -> trajectory URL
    source_options: dict[str, dict] = field(default_factory=dict)  # source task -> fsspec opts
    storage_options: dict[str, Any] = field(default_factory=dict)  # of the output URL

    @property
    def registry_meta(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "kind": self.kind,
            "version": self.version,
            "uid": self.params.uid,
        }


def open_sources(spec: BasisSpec) -> list[TrajectoryStore]:
    return [
        TrajectoryStore.open(url, storage_options=spec.source_options.get(label))
        for label, url in spec.sources.items()
    ]


def make_basis_sources(spec: BasisSpec):
    """The engine's SourceRows for a spec, labelled as the kernels label them: the store URL for
    single-task bases (as `task_basis` does), task IDs for multi-task ones."""
    from worker.svd.engine import make_sources  # noqa: PLC0415 - kernels import torch; serving must not

    stores = open_sources(spec)
    sel = spec.params.selection
    labels = None if spec.kind in SINGLE_TASK else list(spec.sources)
    return make_sources(stores, [sel] * len(stores), spec.params.mode, labels)


def current_inputs_digest(spec: BasisSpec) -> str | None:
    """What `inputs_digest` the basis would record if computed now (None for random)."""
    if spec.kind == BasisKind.RANDOM:
        return None
    from worker.svd.engine import inputs_digest  # noqa: PLC0415 - kernels import torch; serving must not

    sources = make_basis_sources(spec)
    return inputs_digest(sources, None, spec.params.mode, spec.params.scope)


def compute(
    spec: BasisSpec,
    *,
    executor,
    block_cols: int,
    progress: Callable[[str, int, int], None] | None = None,
) -> BasisStore:
    """Compute and commit the basis of `spec`; returns the committed store."""
    meta = {"registry": spec.registry_meta}
    p = spec.params
    if spec.kind == BasisKind.RANDOM:
        from services.random_basis import random_basis  # noqa: PLC0415 - kernels import torch; serving must not

        layout = Layout.from_dict(spec.layout)
        return random_basis(
            spec.url,
            {g.name: g.size for g in layout.groups},
            p.rank,
            p.seed,
            meta={**meta, "layout": layout.to_dict()},
            storage_options=spec.storage_options,
            progress=progress,
        )
    from worker.svd.engine import BasisRequest, compute_bases  # noqa: PLC0415 - kernels import torch; serving must not

    extra: dict[str, Any] = dict(meta)
    if spec.kind not in SINGLE_TASK:
        extra["tasks"] = list(spec.sources)
    if spec.kind == BasisKind.ZEROSHOT:
        extra["held_out"] = p.held_out
    request = BasisRequest(
        spec.url, p.rank, None, spec.kind, extra, storage_options=spec.storage_options
    )
    report = compute_bases(
        make_basis_sources(spec),
        [request],
        mode=p.mode,
        scope=p.scope,
        executor=executor,
        block_cols=block_cols,
        progress=progress,
        overwrite=True,
    )
    return report.bases[0]


def committed(spec: BasisSpec) -> BasisStore | None:
    """The basis this spec already committed (a job re-run after a crash), if any."""
    if not BasisStore.exists(spec.url, spec.storage_options):
        return None
    try:
        store = BasisStore.open(spec.url, spec.storage_options)
    except NotFound:
        return None
    if store.manifest.get("registry", {}).get("uid") != spec.params.uid:
        return None
    return store
