"""The bases users ask for, by name: task, unified, zero-shot and global.

Thin wrappers over `compute_bases` that choose rows and members:
- task: one trajectory's checkpoints;
- unified: checkpoints of several tasks (e.g. the last one of each) in one basis;
- zeroshot: for each task, the unified rows without that task's own rows;
- global: one basis for the whole encoder, from the sum of the layer Grams.

Every keyword not named here goes to `compute_bases`: executor, block_cols, device, progress,
overwrite, rcond. The method is `GramMethod()` (exact, two passes; the default) or
`RandomizedMethod(oversample, power_iters, seed)` (Halko, Martinsson and Tropp 2011) for long
trajectories with k << rows; a bare name ("gram", "randomized") means that method with its
default parameters.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from storage.errors import InvalidInput
from storage.trajectory import TrajectoryStore
from storage.vocabulary import BasisKind, BasisMode, BasisScope, SvdMethod, parse
from worker.svd.engine import BasisRequest, ComputeReport, compute_bases, make_sources
from worker.svd.method import GramMethod, Method, method_from_name


def _join(out: str, name: str) -> str:
    return os.path.join(out, name) if "://" not in out else f"{out.rstrip('/')}/{name}"


def _method(method: Method | SvdMethod | str) -> Method:
    """Callers that name the method (scripts, `method="randomized"`) get its defaults."""
    return method_from_name(method) if isinstance(method, str) else method


def _out(
    storage_options: dict[str, Any] | None, out_storage_options: dict[str, Any] | None
) -> dict[str, Any] | None:
    return out_storage_options if out_storage_options is not None else storage_options


def task_basis(
    store_url: str,
    out_url: str,
    rank: int,
    *,
    mode: BasisMode | str = BasisMode.DELTA,
    selection: str | Sequence[int] | None = None,
    scope: BasisScope | str = BasisScope.LAYER,
    storage_options: dict[str, Any] | None = None,
    out_storage_options: dict[str, Any] | None = None,
    method: Method | SvdMethod | str = GramMethod(),
    **kw: Any,
) -> ComputeReport:
    """The basis of one task's own trajectory (scope='global' for the whole-encoder one).

    selection: which checkpoints (see `engine.select_rows`; default all after theta0).
    storage_options: fsspec options of the store, and of out_url unless out_storage_options
    are given (an s3:// input and output on the same endpoint need them once).
    """
    store = TrajectoryStore.open(store_url, storage_options=storage_options)
    sources = make_sources([store], [selection], mode)
    scope = parse(BasisScope, scope, "scope")
    kind = BasisKind.GLOBAL if scope == BasisScope.GLOBAL else BasisKind.TASK
    out_opts = _out(storage_options, out_storage_options)
    request = BasisRequest(out_url, rank, kind=kind, storage_options=out_opts)
    return compute_bases(sources, [request], mode=mode, scope=scope, method=_method(method), **kw)


def multitask_bases(
    stores: Mapping[str, str],
    out_dir: str,
    rank: int,
    *,
    mode: BasisMode | str = BasisMode.DELTA,
    selection: str | Sequence[int] | None = "last",
    unified: bool = True,
    zeroshot: bool | Sequence[str] = True,
    storage_options: dict[str, Any] | None = None,
    out_storage_options: dict[str, Any] | None = None,
    method: Method | SvdMethod | str = GramMethod(),
    **kw: Any,
) -> ComputeReport:
    """Unified basis over all tasks and a zero-shot basis per task, from one Gram.

    stores: task label -> trajectory URL. Bases go to out_dir/unified and
    out_dir/zeroshot-<label>. Two passes over the data in total. storage_options: as in
    `task_basis`.
    """
    out_opts = _out(storage_options, out_storage_options)
    method = _method(method)
    if len(stores) < 2:
        raise InvalidInput("multi-task bases need at least two tasks")
    labels = list(stores)
    opened = [TrajectoryStore.open(stores[lb], storage_options=storage_options) for lb in labels]
    sources = make_sources(opened, [selection] * len(opened), mode, labels)
    spans, pos = {}, 0
    for src in sources:
        spans[src.label] = list(range(pos, pos + len(src.rows)))
        pos += len(src.rows)
    requests = []
    if unified:
        requests.append(
            BasisRequest(
                _join(out_dir, BasisKind.UNIFIED),
                rank,
                None,
                BasisKind.UNIFIED,
                {"tasks": labels},
                out_opts,
            )
        )
    held_out = labels if zeroshot is True else list(zeroshot or [])
    for lb in held_out:
        if lb not in spans:
            raise InvalidInput(f"zero-shot task {lb!r} is not among {labels}")
        requests.append(_zeroshot_request(out_dir, rank, mode, labels, lb, spans, pos, out_opts))
    return compute_bases(sources, requests, mode=mode, method=method, **kw)


def _zeroshot_request(
    out_dir: str,
    rank: int,
    mode: BasisMode | str,
    labels: Sequence[str],
    held_out: str,
    spans: Mapping[str, list[int]],
    rows: int,
    out_opts: dict[str, Any] | None,
) -> BasisRequest:
    """The zero-shot request for `held_out`: every one of the `rows` rows but the held-out
    task's span (`spans`: label -> its rows), its rank capped by the rows left (one fewer when
    centred)."""
    members = [i for i in range(rows) if i not in set(spans[held_out])]
    centered = mode == BasisMode.CENTERED
    kk = min(rank, len(members) - 1) if centered else min(rank, len(members))
    return BasisRequest(
        _join(out_dir, f"zeroshot-{held_out}"),
        max(kk, 1),
        members,
        BasisKind.ZEROSHOT,
        {"tasks": [x for x in labels if x != held_out], "held_out": held_out},
        out_opts,
    )
