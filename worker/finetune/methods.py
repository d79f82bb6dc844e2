"""Every fine-tuning method of the two papers, by name, from one entry point: `prepare()`.

==========  ====================================================================================
full        all parameters train (the reference point of both papers)
freeze      encoder frozen; embeddings and head train (the paper's Freeze, "V theta = 0")
intrinsic   the task's own basis (transductive, Table 1)
transfer    another task's basis (inductive, Figure 2)
unified     a basis over several tasks' checkpoints (Table 2)
zeroshot    the unified basis without the task's own checkpoints (Table 2)
global      one whole-encoder basis, one theta shared by all layers
random      a seeded random orthonormal basis of the same shapes (the paper's Random)
fastfood    Aghajanyan et al.'s Fastfood projection H G Pi H B; SAID scaling with said=True
==========  ====================================================================================

All subspace methods share the `SubspaceModel` wrapper, the ensemble, the initialization and
the optimizer settings; they differ only in where V comes from, so their numbers compare.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from torch import nn

from storage.errors import InvalidInput
from storage.layout import Layout, layout_from_model
from worker.finetune.config import SubspaceConfig
from worker.finetune.fastfood import FastfoodProjection
from worker.finetune.projection import DenseProjection
from worker.finetune.reparam import SubspaceModel, set_trainable
from worker.finetune.sources import BasisSource, RandomBasisSource

log = logging.getLogger(__name__)

METHODS = (
    "full",
    "freeze",
    "intrinsic",
    "transfer",
    "unified",
    "zeroshot",
    "global",
    "random",
    "fastfood",
)
# The basis kind each stored-basis method trains in.
BASIS_KIND = {
    "intrinsic": "task",
    "transfer": "task",
    "unified": "unified",
    "zeroshot": "zeroshot",
    "global": "global",
}
SUBSPACE_METHODS = (*BASIS_KIND, "random", "fastfood")


def needs_basis(method: str) -> bool:
    """Whether the method trains in a stored basis (random takes one optionally, for shapes)."""
    return method in BASIS_KIND


def prepare(
    method: str,
    base: nn.Module,
    config: SubspaceConfig | None = None,
    *,
    source: BasisSource | None = None,
    task: str | None = None,
    layout: Layout | None = None,
) -> nn.Module:
    """The trainable model for `method`: `base` itself (full, freeze) or a `SubspaceModel`.

    source: where V comes from (stored-basis methods; for random it only fixes k when
    config.rank is unset). task: the task being trained, checked against the basis' task for
    intrinsic (same), transfer (different) and zeroshot (held out).
    """
    if method not in METHODS:
        raise InvalidInput(f"unknown method {method!r}; use one of {list(METHODS)}")
    config = config or SubspaceConfig()
    layout = layout or layout_from_model(base, config.rule)
    if method == "full":
        base.requires_grad_(True)
        return base
    if method == "freeze":
        set_trainable(base, layout, config.train_parts)
        return base
    if method == "global" and config.scope != "global":
        config = dataclasses.replace(config, scope="global")
    if method in BASIS_KIND:
        if source is None:
            raise InvalidInput(f"method {method!r} trains in a stored basis; give one")
        _check_source(method, source, task)
        source.check_layout(layout)
        projections, reference = _dense(source, layout, config)
    elif method == "random":
        k = config.rank or (source.shape(layout.group_names[0])[1] if source else None)
        if k is None:
            raise InvalidInput("method 'random' needs a rank (--rank) or a basis to match")
        rand = RandomBasisSource(layout, k, seed=config.basis_seed, scope=config.scope)
        # A generated basis has no spectrum to scale by: the paper's plain V theta.
        plain = dataclasses.replace(config, rank=None, theta_scale="none")
        projections, reference = _dense(rand, layout, plain)
    else:
        projections, reference = _fastfood(layout, config, source)
    return SubspaceModel(base, layout, projections, config, reference, method=method)


def same_task(a: str, b: str) -> bool:
    """Whether two task names are the same task: a data task and its registry slug."""
    return a.lower().replace("_", "-") == b.lower().replace("_", "-")


def _check_source(method: str, source: BasisSource, task: str | None) -> None:
    want = BASIS_KIND[method]
    if source.kind != want:
        raise InvalidInput(f"method {method!r} needs a {want!r} basis; this one is {source.kind!r}")
    if method == "global" and source.scope != "global":
        raise InvalidInput("method 'global' needs a whole-encoder (scope=global) basis")
    if method != "global" and source.scope != "layer":
        raise InvalidInput(f"method {method!r} needs a layer-wise basis; this one is global")
    ref: dict[str, Any] = source.reference()
    basis_task = ref.get("task")
    if task and basis_task:
        # Registry task IDs are slugs (`rotten-tomatoes`) of the data tasks (`rotten_tomatoes`).
        same = same_task(basis_task, task)
        if method == "intrinsic" and not same:
            raise InvalidInput(
                f"intrinsic fine-tuning of {task!r} needs {task!r}'s own basis, not "
                f"{basis_task!r}'s; use method 'transfer' for another task's basis"
            )
        if method == "transfer" and same:
            raise InvalidInput(f"the basis is {task!r}'s own: that is method 'intrinsic'")
    held_out = ref.get("held_out")
    if method == "zeroshot" and task and held_out and not same_task(held_out, task):
        raise InvalidInput(f"this zero-shot basis holds out {held_out!r}, not {task!r}")
    if method == "unified" and task and ref.get("tasks") and task not in ref["tasks"]:
        log.warning("task %r is not among the unified basis' tasks %s", task, ref["tasks"])


def _dense(source: BasisSource, layout: Layout, config: SubspaceConfig):
    projections, reference = {}, source.reference()
    ranks = {g: source.shape(g)[1] for g in layout.group_names}
    if config.rank is not None and config.rank > max(ranks.values()) and not config.allow_short:
        raise InvalidInput(
            f"rank {config.rank} was asked for but the basis has rank {max(ranks.values())}"
        )
    # A layer whose trajectory spans fewer directions than the others (the kernel's rcond
    # cutoff dropped a vanishing singular value) keeps all it has: that is its whole subspace.
    short = {g: r for g, r in ranks.items() if config.rank is not None and r < config.rank}
    if short and config.scope == "global":
        raise InvalidInput(f"a global theta needs rank {config.rank} in every layer: {short}")
    if short:
        log.warning(
            "basis layers %s have rank below %d; they keep all their columns", short, config.rank
        )
    for g in layout.group_names:
        v = source.load(g)  # (D_l, k)
        scale = _scale(source, g) if config.theta_scale == "extent" else None
        if config.rank is not None:
            v = v[:, : config.rank]
            scale = None if scale is None else scale[: config.rank]
        projections[g] = DenseProjection(
            v, dtype=config.basis_dtype, block_rows=config.block_rows, scale=scale
        )
    reference = {**reference, "theta_scale": config.theta_scale}
    if config.rank is not None:
        reference = {**reference, "columns": config.rank}
        if short:
            reference["short_layers"] = short
    return projections, reference


def _scale(source: BasisSource, layer: str):
    s = source.extent(layer)
    if s is None:
        raise InvalidInput(
            f"basis layer {layer!r} records no trajectory extent to scale theta by (a basis "
            "computed before tinysub recorded it, or a randomized basis in raw mode): "
            "recompute it, or use theta_scale 'none' (the paper's plain V theta)"
        )
    return s


def _fastfood(layout: Layout, config: SubspaceConfig, source: BasisSource | None):
    d = config.rank or (source.shape(layout.group_names[0])[1] if source else None)
    if d is None:
        raise InvalidInput("method 'fastfood' needs a rank (--rank) or a basis to match")
    projections = {
        g.name: FastfoodProjection(
            g.size, d, seed=config.basis_seed, index=i, block=config.fastfood_block
        )
        for i, g in enumerate(layout.groups)
    }
    reference = {
        "kind": "fastfood",
        "scope": config.scope,
        "seed": config.basis_seed,
        "said": config.said,
        "generator": "fastfood-HGPiHB/1",
        "layers": {
            name: {
                "shape": [p.rows, p.dim],
                "block": p.block,
                "sha256": p.factors_sha256(),
            }
            for name, p in projections.items()
        },
    }
    return projections, reference
