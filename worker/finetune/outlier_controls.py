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
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np
import torch

from storage.errors import InvalidInput
from storage.layout import Group, Layout
from worker.finetune.outliers import disable_masks

COMPONENTS = (
    "attention.query",
    "attention.key",
    "attention.value",
    "attention.qkv",  # fused query/key/value (GPT-2 c_attn, GPT-NeoX query_key_value)
    "attention.output",
    "ffn.in",
    "ffn.gate",  # gated FFNs (Llama gate_proj)
    "ffn.out",
    "layernorm.gain",
    "layernorm.bias",
    "other",
)
LN_GAIN = "layernorm.gain"

CONTROL_MODES = (
    "outlier",
    "outlier_non_ln",
    "outlier_ln",
    "ln_gains",
    "random",
    "random_matched",
)

# Module paths (parameter name without its trailing weight/bias) -> component, first match wins.
# Each pattern is anchored at a dot or the start and at the end, so `attention.output.dense`
# is claimed by the attention output before the FFN's `output.dense` can take it.
_MATRIX_RULES: tuple[tuple[str, str], ...] = (
    (r"c_attn|query_key_value|qkv|qkv_proj|in_proj|wqkv|w_pack", "attention.qkv"),
    (r"query|query_proj|q_proj|q_lin|q", "attention.query"),
    (r"key|key_proj|k_proj|k_lin|k", "attention.key"),
    (r"value|value_proj|v_proj|v_lin|v", "attention.value"),
    (
        r"attention\.output\.dense|attn\.c_proj|attention\.dense|self_attention\.dense"
        r"|o_proj|out_proj|out_lin|o",
        "attention.output",
    ),
    (r"intermediate\.dense|c_fc|fc1|fc_in|up_proj|dense_h_to_4h|lin1", "ffn.in"),
    (r"gate_proj", "ffn.gate"),
    (r"output\.dense|mlp\.c_proj|fc2|fc_out|down_proj|dense_4h_to_h|lin2", "ffn.out"),
)
_MATRIX_PATTERNS = tuple(
    (re.compile(rf"(?:^|\.)(?:{pat})$", re.IGNORECASE), label) for pat, label in _MATRIX_RULES
)
_SUFFIX = re.compile(r"[._](weight|bias)$")
# LayerNorm, layer_norm, input_layernorm, RMSNorm, final_layer_norm, GPT-2's ln_1 / ln_f.
_NORM = re.compile(r"norm|^ln(?:_\w+)?$", re.IGNORECASE)


def component_of(name: str) -> str:
    """Coarse component label (one of `COMPONENTS`) of a parameter name.

    The name may be relative to its layer group (``attention.self.query.weight``) or a full
    model name. A matrix and its bias share a label (the bias of the query projection is
    ``attention.query``); a normalization layer splits into ``layernorm.gain`` (its weight,
    LayerNorm or RMSNorm) and ``layernorm.bias``. Covers BERT, RoBERTa, ELECTRA, MPNet,
    DistilBERT, DeBERTa, GPT-2, GPT-J, GPT-NeoX, OPT, Llama, Mistral and Qwen naming;
    anything else is ``other``.
    """
    match = _SUFFIX.search(name)
    if match is None:
        return "other"
    module, kind = name[: match.start()], match.group(1)
    if _NORM.search(module.rpartition(".")[2]):
        return LN_GAIN if kind == "weight" else "layernorm.bias"
    for pattern, label in _MATRIX_PATTERNS:
        if pattern.search(module):
            return label
    return "other"


def _components(group: Group) -> np.ndarray:
    # (n_params,) component label of each parameter of the group, in layout order
    return np.array([component_of(p.name) for p in group.params], dtype=object)


def _param_index(group: Group, flat: np.ndarray) -> np.ndarray:
    """Index into ``group.params`` of the parameter holding each flat position."""
    offsets = np.array([p.offset for p in group.params], dtype=np.int64)
    return np.searchsorted(offsets, flat, side="right") - 1


def _checked(layout: Layout, layer: str, flat) -> np.ndarray:
    """Unique sorted int64 positions of `layer`, refusing any outside the layer."""
    size = layout.group(layer).size
    flat = np.asarray(flat).reshape(-1)
    if flat.size and not np.issubdtype(flat.dtype, np.integer):
        raise InvalidInput(f"positions of {layer} must be integers, got dtype {flat.dtype}")
    flat = np.unique(flat.astype(np.int64))
    if flat.size and (flat[0] < 0 or flat[-1] >= size):
        bad = int(flat[0] if flat[0] < 0 else flat[-1])
        raise InvalidInput(
            f"position {bad} of {layer} falls outside its {size} parameters (0..{size - 1})"
        )
    return flat


def _labels(layout: Layout, layer: str, flat: np.ndarray) -> np.ndarray:
    group = layout.group(layer)
    return _components(group)[_param_index(group, flat)]


def component_counts(layout: Layout, positions: Mapping[str, np.ndarray]) -> dict[str, int]:
    """Number of positions per component, pooled over the layers of `positions`.

    Every label of `COMPONENTS` is a key (0 where none fall). Duplicate positions count once.
    """
    counts = dict.fromkeys(COMPONENTS, 0)
    for layer, flat in positions.items():
        for label in _labels(layout, layer, _checked(layout, layer, flat)).tolist():
            counts[label] += 1
    return counts


def _component_sizes(layout: Layout, layers) -> dict[str, int]:
    sizes = dict.fromkeys(COMPONENTS, 0)
    for layer in layers:
        for spec in layout.group(layer).params:
            sizes[component_of(spec.name)] += spec.numel
    return sizes


def enrichment(layout: Layout, positions: Mapping[str, np.ndarray]) -> list[dict]:
    """Where the outliers sit, against where the parameters sit, per component.

    For each component present in the layers of `positions` (pooled over those layers):
    ``count`` of positions, ``fraction`` of all positions, ``params`` and ``share`` of all
    parameters of those layers, ``expected`` count if the positions were uniform
    (total * share), ``enrichment`` = fraction / share (1.0: no enrichment) and ``z``, the
    binomial z-score (count - expected) / sqrt(total * share * (1 - share)) of that uniform
    null. ``fraction``/``enrichment``/``z`` are None when there are no positions at all
    (``z`` also when the component is the whole layer).
    """
    counts = component_counts(layout, positions)
    sizes = _component_sizes(layout, positions)
    total, params = sum(counts.values()), sum(sizes.values())
    rows = []
    for comp in COMPONENTS:
        if not sizes[comp]:
            continue
        share = sizes[comp] / params
        var = total * share * (1 - share)
        rows.append(
            {
                "component": comp,
                "count": counts[comp],
                "expected": total * share,
                "fraction": counts[comp] / total if total else None,
                "params": sizes[comp],
                "share": share,
                "enrichment": counts[comp] / total / share if total else None,
                "z": (counts[comp] - total * share) / var**0.5 if var > 0 else None,
            }
        )
    return rows


def layernorm_gain_mask(layout: Layout, layer: str) -> np.ndarray:
    """(size,) bool over the layer's flat vector: True on every LayerNorm/RMSNorm gain entry."""
    group = layout.group(layer)
    mask = np.zeros(group.size, dtype=bool)
    for spec in group.params:
        if component_of(spec.name) == LN_GAIN:
            mask[spec.offset : spec.offset + spec.numel] = True
    return mask


def split_positions(
    layout: Layout, positions: Mapping[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(LayerNorm-gain positions, all other positions) per layer, each sorted and unique."""
    gains, rest = {}, {}
    for layer, flat in positions.items():
        flat = _checked(layout, layer, flat)
        is_gain = _labels(layout, layer, flat) == LN_GAIN
        gains[layer], rest[layer] = flat[is_gain], flat[~is_gain]
    return gains, rest


def _flat(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float64).reshape(-1)


def top_magnitude_overlap(
    positions: Mapping[str, np.ndarray], theta0: Mapping[str, np.ndarray]
) -> dict:
    """How far the outliers are just the largest weights of theta0.

    Per layer with m unique positions: ``hits``, how many of them are among the m entries of
    largest |theta0| of the layer, and ``fraction`` = hits / m, against ``expected`` = m / size
    for a uniformly random set. "Among the m largest" means |theta0| at least the m-th largest
    value, so ties at that threshold count as inside (a fresh model's LayerNorm gains are all
    exactly 1.0; with such ties ``expected`` understates the random baseline). ``total`` pools
    the layers: hits / count against sum(m^2 / size) / count.
    """
    layers, hits_all, count_all, expected_hits = [], 0, 0, 0.0
    for layer, flat in positions.items():
        if layer not in theta0:
            raise InvalidInput(f"theta0 has no layer {layer!r}; it has {list(theta0)}")
        mag = np.abs(_flat(theta0[layer]))
        flat = np.unique(np.asarray(flat, dtype=np.int64))
        if flat.size and (flat[0] < 0 or flat[-1] >= mag.size):
            raise InvalidInput(f"positions of {layer} fall outside its {mag.size} weights")
        m = int(flat.size)
        hits = 0
        if m:
            threshold = np.partition(mag, mag.size - m)[mag.size - m]  # m-th largest
            hits = int(np.count_nonzero(mag[flat] >= threshold))
        layers.append(
            {
                "layer": layer,
                "count": m,
                "size": int(mag.size),
                "hits": hits,
                "fraction": hits / m if m else None,
                "expected": m / mag.size if mag.size else 0.0,
            }
        )
        hits_all, count_all = hits_all + hits, count_all + m
        expected_hits += m * m / mag.size if mag.size else 0.0
    total = {
        "count": count_all,
        "hits": hits_all,
        "fraction": hits_all / count_all if count_all else None,
        "expected": expected_hits / count_all if count_all else None,
    }
    return {"layers": layers, "total": total}


def expected_jaccard(m: int, n: int, size: int) -> float | None:
    """E[|A∩B| / |A∪B|] for independent uniform random subsets of sizes m and n of `size`.

    |A∩B| is hypergeometric (population `size`, m successes, n draws); its pmf is built in log
    space from the ratio P(k+1)/P(k) = (m-k)(n-k) / ((k+1)(size-m-n+k+1)) and normalized, so
    no factorials overflow. Exact; O(min(m, n)) time. None when m = n = 0.
    """
    if not 0 <= m <= size or not 0 <= n <= size:
        raise InvalidInput(f"set sizes {m} and {n} do not fit in {size} positions")
    if m + n == 0:
        return None
    lo, hi = max(0, m + n - size), min(m, n)
    k = np.arange(lo, hi + 1, dtype=np.float64)
    step = np.log((m - k[:-1]) * (n - k[:-1])) - np.log((k[:-1] + 1) * (size - m - n + k[:-1] + 1))
    logp = np.concatenate([[0.0], np.cumsum(step)])
    p = np.exp(logp - logp.max())
    return float((p * k / (m + n - k)).sum() / p.sum())


def _sizes_of(sizes: Layout | Mapping[str, int] | None) -> Mapping[str, int] | None:
    if isinstance(sizes, Layout):
        return {g.name: g.size for g in sizes.groups}
    return sizes


def overlap(
    a: Mapping[str, np.ndarray],
    b: Mapping[str, np.ndarray],
    *,
    sizes: Layout | Mapping[str, int] | None = None,
) -> dict:
    """Overlap of two position sets (e.g. two tasks' outliers), per layer and in total.

    Per layer (those of `a`, then those only in `b`; a missing layer is empty): ``intersection``
    |A∩B|, ``a`` |A|, ``b`` |B|, ``jaccard`` |A∩B| / |A∪B| (None when both are empty). With
    `sizes` (a Layout or layer -> number of weights) also the random baseline for sets of the
    same sizes: ``expected_intersection`` |A||B| / size and the exact ``expected_jaccard``.
    ``total`` pools the layers (a position is a layer and an index); its expected Jaccard is
    E[sum |A∩B|] / (|A| + |B| - E[sum |A∩B|]), the ratio of expectations, which the exact
    expectation approaches as the counts grow.
    """
    sizes = _sizes_of(sizes)
    layers = []
    for layer in list(a) + [x for x in b if x not in a]:
        sa = np.unique(np.asarray(a.get(layer, ()), dtype=np.int64))
        sb = np.unique(np.asarray(b.get(layer, ()), dtype=np.int64))
        inter = int(np.intersect1d(sa, sb, assume_unique=True).size)
        union = sa.size + sb.size - inter
        row = {
            "layer": layer,
            "intersection": inter,
            "a": int(sa.size),
            "b": int(sb.size),
            "jaccard": inter / union if union else None,
        }
        if sizes is not None:
            if layer not in sizes:
                raise InvalidInput(f"no size for layer {layer!r}; sizes has {list(sizes)}")
            size = int(sizes[layer])
            row["expected_intersection"] = sa.size * sb.size / size if size else 0.0
            row["expected_jaccard"] = expected_jaccard(int(sa.size), int(sb.size), size)
        layers.append(row)
    return {"layers": layers, "total": _pooled(layers, sizes is not None)}


def _pooled(layers: list[dict], with_expected: bool) -> dict:
    inter = sum(r["intersection"] for r in layers)
    na, nb = sum(r["a"] for r in layers), sum(r["b"] for r in layers)
    total = {"intersection": inter, "a": na, "b": nb}
    total["jaccard"] = inter / (na + nb - inter) if na + nb - inter else None
    if with_expected:
        e = sum(r["expected_intersection"] for r in layers)
        total["expected_intersection"] = e
        total["expected_jaccard"] = e / (na + nb - e) if na + nb - e else None
    return total


def _matched_draw(
    layout: Layout, layer: str, flat: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Random positions with as many per component as `flat` has, uniform within each."""
    group = layout.group(layer)
    comps = _components(group)
    wanted = comps[_param_index(group, flat)]
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
    checked = {layer: _checked(layout, layer, flat) for layer, flat in positions.items()}
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
