"""Which rows of which trajectory stores enter a basis computation.

A source is one store's selected checkpoint rows plus the row subtracted from them (theta0,
row 0) in `delta` and `centered` modes; in `raw` mode the first source's theta0 is only a
float64 shift of every row (see `worker.svd.gram`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from storage.errors import InvalidInput, LayoutMismatch
from storage.trajectory import TrajectoryStore
from storage.vocabulary import BasisMode
from worker.svd.gram import check_mode
from worker.svd.tasks import SourceRows


def select_rows(
    store: TrajectoryStore, selection: str | Sequence[int] | None, mode: BasisMode | str
) -> tuple[int, ...]:
    """Resolve a checkpoint selection: None/'all' (rows 1..t-1, the fine-tuning checkpoints),
    'last', 'every:K', 'first:K', 'last:K', or explicit row indices."""
    t = store.num_rows
    if t == 0:
        raise InvalidInput(f"trajectory {store.url} is empty")
    ckpts = list(range(1, t))
    if selection is None or selection == "all":
        rows = ckpts
    elif isinstance(selection, str):
        kind, _, arg = selection.partition(":")
        try:
            n = int(arg) if arg else None
        except ValueError:
            raise InvalidInput(f"bad checkpoint selection {selection!r}") from None
        if kind == "last" and n is None:
            rows = ckpts[-1:]
        elif kind == "last" and n:
            rows = ckpts[-n:]
        elif kind == "first" and n:
            rows = ckpts[:n]
        elif kind == "every" and n:
            rows = ckpts[n - 1 :: n]
        else:
            raise InvalidInput(
                f"bad checkpoint selection {selection!r}; use all, last, "
                "last:K, first:K, every:K or row indices"
            )
    else:
        rows = sorted({int(r) for r in selection})
        bad = [r for r in rows if not 0 <= r < t]
        if bad:
            raise InvalidInput(f"rows {bad} are not in {store.url}, which has {t} rows")
    if check_mode(mode) != BasisMode.RAW:
        rows = [r for r in rows if r != 0]
    if not rows:
        raise InvalidInput(
            f"trajectory {store.url} has {t} row(s): no checkpoint after theta0 "
            f"to build a {mode} basis from"
        )
    return tuple(rows)


def make_sources(
    stores: Sequence[TrajectoryStore],
    selections: Sequence[str | Sequence[int] | None],
    mode: BasisMode | str,
    labels: Sequence[str] | None = None,
) -> list[SourceRows]:
    mode = check_mode(mode)
    first = stores[0]
    for s in stores[1:]:
        if s.layout.hash != first.layout.hash:
            raise LayoutMismatch(
                f"{s.url} has layout {s.layout.hash[:12]} but {first.url} has "
                f"{first.layout.hash[:12]}: bases need one model layout"
            )
    out = []
    for i, (store, sel) in enumerate(zip(stores, selections, strict=True)):
        # theta0 (row 0) is subtracted in delta/centered modes; in raw mode the first
        # source's theta0 is only a float64 shift of every row (see worker.svd.gram).
        ref_row = 0 if mode != BasisMode.RAW or i == 0 else None
        out.append(
            SourceRows(
                url=store.url,
                rows=select_rows(store, sel, mode),
                ref_row=ref_row,
                label=labels[i] if labels else store.url,
                storage_options_json=json.dumps(store.loc.storage_options, sort_keys=True),
                created_at=store.created_at,
            )
        )
    return out
