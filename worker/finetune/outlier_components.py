"""Where outliers sit: a coarse component label per parameter (`component_of`), position
counts and enrichment over each component's share of the parameters (`enrichment`), the
LayerNorm-gain entries of a layer and the split of positions into gains and the rest."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import numpy as np
import numpy.typing as npt

from storage.errors import InvalidInput
from storage.layout import Group, Layout

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


def param_components(group: Group) -> np.ndarray:
    """(n_params,) component label of each parameter of the group, in layout order."""
    return np.array([component_of(p.name) for p in group.params], dtype=object)


def param_index(group: Group, flat: np.ndarray) -> np.ndarray:
    """Index into ``group.params`` of the parameter holding each flat position."""
    offsets = np.array([p.offset for p in group.params], dtype=np.int64)
    return np.searchsorted(offsets, flat, side="right") - 1


def checked_positions(layout: Layout, layer: str, flat: npt.ArrayLike) -> np.ndarray:
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
    return param_components(group)[param_index(group, flat)]


def component_counts(layout: Layout, positions: Mapping[str, np.ndarray]) -> dict[str, int]:
    """Number of positions per component, pooled over the layers of `positions`.

    Every label of `COMPONENTS` is a key (0 where none fall). Duplicate positions count once.
    """
    counts = dict.fromkeys(COMPONENTS, 0)
    for layer, flat in positions.items():
        for label in _labels(layout, layer, checked_positions(layout, layer, flat)).tolist():
            counts[label] += 1
    return counts


def _component_sizes(layout: Layout, layers: Iterable[str]) -> dict[str, int]:
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
        flat = checked_positions(layout, layer, flat)
        is_gain = _labels(layout, layer, flat) == LN_GAIN
        gains[layer], rest[layer] = flat[is_gain], flat[~is_gain]
    return gains, rest
