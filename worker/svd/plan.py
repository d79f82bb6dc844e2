"""Stage 1 of a basis computation: check the request and decide everything before any data is
read — the union of rows (all sources' rows, concatenated), what each basis takes of them, the
layer groups and the column blocks every pass maps over.

Why a stage of its own: bad input must raise before anything is read or written, and the later
stages (solve, project, commit) then take one `Plan` instead of a dozen loose arguments.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from storage.basis import BasisStore
from storage.errors import Conflict, InvalidInput
from storage.layout import Layout
from storage.trajectory import TrajectoryStore
from storage.vocabulary import BasisKind, BasisMode, BasisScope, parse
from worker.svd.gram import check_mode, resolve_rcond
from worker.svd.method import Method, check_method
from worker.svd.tasks import BlockTask, SourceRows

# The reduction key of a global basis: every layer's blocks sum into it.
GLOBAL_KEY = BasisScope.GLOBAL.value


@dataclass
class BasisRequest:
    """One basis to produce: which of the computation's rows it spans, its rank, where it goes."""

    out_url: str
    rank: int
    members: Sequence[int] | None = None  # indices into the concatenated rows; None = all
    kind: BasisKind = BasisKind.TASK
    meta: dict[str, Any] = field(default_factory=dict)
    storage_options: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.kind = parse(BasisKind, self.kind, "basis kind")  # callers may name it: "task"


@dataclass(frozen=True)
class Plan:
    """A checked computation: what every later stage needs, and nothing read from the data."""

    sources: tuple[SourceRows, ...]
    requests: tuple[BasisRequest, ...]
    mode: BasisMode
    scope: BasisScope
    method: Method
    rcond: float  # resolved, so the manifest records the cut that was applied
    groups: tuple[str, ...]
    store: TrajectoryStore  # the first source's: layout, chunk grid, model name and revision
    blocks: tuple[BlockTask, ...]  # every pass maps over these, in this order
    n: int  # rows of the union (all sources' rows, concatenated)

    @property
    def layout(self) -> Layout:
        return self.store.layout

    @property
    def augmented(self) -> bool:
        """Raw mode adds theta0 as a shift row (see `worker.svd.gram`)."""
        return self.mode == BasisMode.RAW

    def reduction_key(self, group: str) -> Hashable:
        """The key a group's blocks are summed under: its own, or one for a global basis."""
        return GLOBAL_KEY if self.scope == BasisScope.GLOBAL else group

    @property
    def bytes_read(self) -> int:
        """Bytes read from the stores over all passes: per pass the selected rows plus theta0
        where it is subtracted, in float32."""
        rows_read = sum(len(set(s.rows) | ({s.ref_row} - {None})) for s in self.sources)
        width = sum(self.layout.group(g).size for g in self.groups)
        return self.method.passes * 4 * rows_read * width


def make_plan(
    sources: Sequence[SourceRows],
    requests: Sequence[BasisRequest],
    *,
    mode: BasisMode | str,
    scope: BasisScope | str,
    method: Method,
    groups: Sequence[str] | None = None,
    rcond: float | None = None,
    overwrite: bool = False,
    block_cols: int,
    device: str | None = None,
) -> Plan:
    """Check everything that can be checked without reading data and lay out the blocks.
    Raises InvalidInput (or Conflict for an existing basis) before anything is written."""
    mode = check_mode(mode)
    scope = parse(BasisScope, scope, "scope")
    check_method(method)
    rcond = resolve_rcond(mode, rcond, factored=method.factored)
    if not sources or not requests:
        raise InvalidInput("nothing to compute: no sources or no bases requested")
    check_outputs(requests, overwrite)
    store = TrajectoryStore.open(sources[0].url, storage_options=sources[0].storage_options)
    group_names = tuple(groups) if groups else tuple(store.layout.group_names)
    for g in group_names:
        store.layout.group(g)  # raises for a group the layout does not have
    n = sum(len(s.rows) for s in sources)
    check_ranks(requests, n)
    blocks = tuple(
        BlockTask(tuple(sources), g, a, b, device, augment=mode == BasisMode.RAW)
        for g in group_names
        for a, b in store.column_ranges(g, block_cols)
    )
    return Plan(
        tuple(sources), tuple(requests), mode, scope, method, rcond, group_names, store, blocks, n
    )


def check_ranks(requests: Sequence[BasisRequest], n: int) -> None:
    """Each basis' rank must fit the rows it spans (of the n rows of the union)."""
    for req in requests:
        members = range(n) if req.members is None else req.members
        if req.rank < 1 or req.rank > len(members):
            raise InvalidInput(
                f"basis {req.kind.value!r} spans {len(members)} rows but rank {req.rank} "
                f"was asked for; use 1 <= k <= {len(members)}"
            )


def check_outputs(requests: Sequence[BasisRequest], overwrite: bool) -> None:
    """Refuse before any work (and so before anything is written) when two bases would go to
    one place or a finished basis would be replaced without overwrite=True."""
    seen = set()
    for req in requests:
        if req.out_url in seen:
            raise InvalidInput(f"two bases would be written to {req.out_url}")
        seen.add(req.out_url)
        if not overwrite and BasisStore.exists(req.out_url, req.storage_options):
            raise Conflict(
                f"a finished basis already exists at {req.out_url}; pass overwrite=True "
                "to replace it"
            )
