"""Controls for the outlier-disabling experiment (Zhang et al. 2023, Table 3).

The paper zeroes the ~0.3% of weights whose entry in the subspace update V theta lies beyond
3 sigma, sees accuracy collapse, and zeroes as many uniformly random weights as its only
control. That cannot tell task knowledge from mechanics: LayerNorm gains sit near 1.0 at the
tail of theta0, so a basis built from raw checkpoints tends to put them among the outliers, and
zeroing a gain silences a whole hidden channel. This module supplies what is needed to tell
the two apart:

- where the outliers sit: a coarse component label per parameter (`component_of`), counts
  and enrichment over each component's share of the parameters (`enrichment`);
- whether they merely track the magnitude of theta0 (`top_magnitude_overlap`);
- whether two tasks find the same positions (`overlap`, with the Jaccard index of random sets
  of the same sizes as the baseline);
- masks for controlled disabling (`control_masks`): the outliers without the LayerNorm gains,
  only those gains, all gains, and random weights matched to the outliers' composition;
- `zero_weights`, the post-hoc variant: zero the masked entries of a finished model.

The labels and enrichment live in worker.finetune.outlier_components, the overlaps in
worker.finetune.outlier_overlap; this module draws the controls and re-exports the rest.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from storage.errors import InvalidInput
from storage.layout import Layout
from worker.finetune.outlier_components import (
    COMPONENTS,
    LN_GAIN,
    checked_positions,
    component_counts,
    component_of,
    enrichment,
    layernorm_gain_mask,
    param_components,
    param_index,
    split_positions,
)
from worker.finetune.outlier_overlap import expected_jaccard, overlap, top_magnitude_overlap
from worker.finetune.outliers import disable_masks

__all__ = [
    "COMPONENTS",
    "CONTROL_MODES",
    "LN_GAIN",
    "component_counts",
    "component_of",
    "control_masks",
    "control_positions",
    "enrichment",
    "expected_jaccard",
    "layernorm_gain_mask",
    "overlap",
    "split_positions",
    "top_magnitude_overlap",
    "zero_weights",
]

CONTROL_MODES = (
    "outlier",
    "outlier_non_ln",
    "outlier_ln",
    "ln_gains",
    "random",
    "random_matched",
)


def _matched_draw(
    layout: Layout, layer: str, flat: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Random positions with as many per component as `flat` has, uniform within each."""
    group = layout.group(layer)
    comps = param_components(group)
    wanted = comps[param_index(group, flat)]
    drawn = []
    for comp in COMPONENTS:  # fixed order: the same seed draws the same positions
        k = int(np.count_nonzero(wanted == comp))
        if not k:
            continue
        specs = [s for s, c in zip(group.params, comps, strict=True) if c == comp]
        numel = np.array([s.numel for s in specs], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(numel)[:-1]])  # of each spec within the pool
        pick = rng.choice(int(numel.sum()), size=k, replace=False)
        where = np.searchsorted(starts, pick, side="right") - 1
        offsets = np.array([s.offset for s in specs], dtype=np.int64)
        drawn.append(offsets[where] + pick - starts[where])
    return np.sort(np.concatenate(drawn)) if drawn else np.empty(0, dtype=np.int64)


def control_positions(
    layout: Layout, positions: Mapping[str, np.ndarray], *, mode: str, seed: int = 0
) -> dict[str, np.ndarray]:
    """The flat positions per layer that `control_masks` zeroes (see there for the modes)."""
    if mode not in CONTROL_MODES:
        raise InvalidInput(f"control mode {mode!r} is not one of {list(CONTROL_MODES)}")
    checked = {layer: checked_positions(layout, layer, flat) for layer, flat in positions.items()}
    if mode == "outlier":
        return checked
    rng = np.random.default_rng(seed)
    if mode == "random":
        # The draw of disable_masks(mode='random'): one generator, layers in order.
        return {
            layer: rng.choice(layout.group(layer).size, size=flat.size, replace=False)
            for layer, flat in checked.items()
        }
    if mode in ("outlier_ln", "outlier_non_ln"):
        gains, rest = split_positions(layout, checked)
        return gains if mode == "outlier_ln" else rest
    if mode == "ln_gains":
        return {layer: np.flatnonzero(layernorm_gain_mask(layout, layer)) for layer in checked}
    return {layer: _matched_draw(layout, layer, flat, rng) for layer, flat in checked.items()}


def control_masks(
    layout: Layout, positions: Mapping[str, np.ndarray], *, mode: str, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Parameter full name -> bool mask (True = zero it) for a controlled Table 3 run.

    Parameters
    ----------
    layout:
        The layout the positions index (flat positions in each layer's vector).
    positions:
        layer -> outlier positions (e.g. ``LayerOutliers.indices``); duplicates count once.
    mode:
        One of `CONTROL_MODES`:

        - ``outlier``: the given positions (the paper's run).
        - ``outlier_non_ln``: the given positions that are not LayerNorm gains: if accuracy
          survives this, the collapse came from the gains.
        - ``outlier_ln``: only the given positions that are LayerNorm gains.
        - ``ln_gains``: ALL LayerNorm gain entries of the layers in `positions`, outliers or
          not (including layers with no outliers): the mechanical upper bound of zeroing gains.
        - ``random``: as many positions per layer, uniform over the whole layer (the paper's
          control; identical to ``disable_masks(mode='random')`` with the same seed).
        - ``random_matched``: random positions with exactly the outliers' count per component
          per layer, uniform without replacement within the component. They may coincide with
          outliers, at the rate count / component size: the null of "same composition, any
          position".
    seed:
        Seed of the random modes; layers draw in the order of `positions`.

    Raises
    ------
    InvalidInput
        For an unknown mode, or positions that are not integers inside their layer.
    """
    return disable_masks(layout, control_positions(layout, positions, mode=mode, seed=seed))


def zero_weights(model: torch.nn.Module, masks: Mapping[str, torch.Tensor]) -> int:
    """Zero the masked entries of a finished model in place (Table 3 without retraining).

    masks: parameter full name -> bool mask of the parameter's shape (as from `control_masks`).
    Every mask is checked before any weight changes, so a refused call leaves the model as it
    was. Returns the number of masked entries (those already zero included).
    """
    params = dict(model.named_parameters())
    checked = []
    for name, mask in masks.items():
        if name not in params:
            raise InvalidInput(f"the model has no parameter {name!r}")
        mask = torch.as_tensor(mask)
        if mask.dtype != torch.bool:
            raise InvalidInput(f"mask of {name} must be bool, got {mask.dtype}")
        if mask.shape != params[name].shape:
            raise InvalidInput(
                f"mask of {name} has shape {tuple(mask.shape)}, "
                f"the parameter has {tuple(params[name].shape)}"
            )
        checked.append((params[name], mask.to(params[name].device)))
    with torch.no_grad():
        for p, mask in checked:
            p.masked_fill_(mask, 0.0)
    return int(sum(int(mask.sum()) for _, mask in checked))
