"""Layouts of real (tiny, randomly initialised) transformers models of each family.

The expected groups are computed from the model's module tree (`model.encoder.layer[i]`,
`model.h[i]`, `model.layers[i]`), not from parameter names, so the grouping rules are checked
against the architecture itself.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from storage.arrays import flatten_state
from storage.errors import InvalidInput, LayoutMismatch
from storage.layout import Layout, build_layout, layout_from_model, layout_from_state_dict

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


@dataclass
class Family:
    name: str
    rule: str  # what `auto` should pick
    make_config: Any
    base: str  # class names in transformers
    head: str
    layers: Any  # base model -> its list of layer modules
    head_backbone: str  # attribute of the head model holding the base model


FAMILIES = [
    Family(
        "bert",
        "bert",
        lambda: transformers.BertConfig(vocab_size=100, **TINY),
        "BertModel",
        "BertForSequenceClassification",
        lambda m: m.encoder.layer,
        "bert",
    ),
    Family(
        "roberta",
        "bert",
        lambda: transformers.RobertaConfig(vocab_size=100, **TINY),
        "RobertaModel",
        "RobertaForSequenceClassification",
        lambda m: m.encoder.layer,
        "roberta",
    ),
    Family(
        "mpnet",
        "bert",
        lambda: transformers.MPNetConfig(vocab_size=100, **TINY),
        "MPNetModel",
        "MPNetForSequenceClassification",
        lambda m: m.encoder.layer,
        "mpnet",
    ),
    Family(
        "gpt2",
        "gpt2",
        lambda: transformers.GPT2Config(
            vocab_size=100,
            n_embd=32,
            n_layer=2,
            n_head=2,
            n_positions=64,
            bos_token_id=0,
            eos_token_id=0,
        ),  # fmt: skip
        "GPT2Model",
        "GPT2LMHeadModel",
        lambda m: m.h,
        "transformer",
    ),
    Family(
        "llama",
        "llama",
        lambda: transformers.LlamaConfig(vocab_size=100, num_key_value_heads=1, **TINY),
        "LlamaModel",
        "LlamaForCausalLM",
        lambda m: m.layers,
        "model",
    ),
]


@pytest.fixture(scope="module", params=FAMILIES, ids=[f.name for f in FAMILIES])
def family(request):
    """(family, base model, head model whose backbone holds the base model's weights)."""
    fam: Family = request.param
    torch.manual_seed(0)
    config = fam.make_config()
    base = getattr(transformers, fam.base)(config).eval()
    head = getattr(transformers, fam.head)(config).eval()
    # Some heads build their backbone without the pooler: only the pooler may be left over.
    result = getattr(head, fam.head_backbone).load_state_dict(base.state_dict(), strict=False)
    assert not result.missing_keys
    assert all(k.startswith("pooler.") for k in result.unexpected_keys)
    return fam, base, head


def module_groups(fam: Family, model) -> list[tuple[set[str], int]]:
    """(full parameter names, numel) of each layer module, from the module tree."""
    names = {id(p): n for n, p in model.named_parameters()}
    out = []
    for layer in fam.layers(model):
        params = list(layer.parameters())
        full = {names[id(p)] for p in params}
        out.append((full, sum(p.numel() for p in params)))
    return out


def test_auto_rule_finds_one_group_per_layer(family):
    fam, base, _ = family
    layout = layout_from_model(base)
    assert layout.rule == fam.rule
    expected = module_groups(fam, base)
    assert (
        layout.group_names
        == [f"layer.{i}" for i in range(len(expected))]
        == [
            "layer.0",
            "layer.1",
        ]
    )
    for group, (full, numel) in zip(layout.groups, expected, strict=True):
        assert group.size == numel
        assert set(group.full_names()) == full
        # Offsets tile the flat vector without gaps or overlaps, in model order.
        ends = [p.offset + p.numel for p in group.params]
        assert [p.offset for p in group.params] == [0, *ends[:-1]]
    assert layout.total_size == sum(n for _, n in expected)


def test_embeddings_and_heads_are_not_in_the_layout(family):
    fam, base, head = family
    for model in (base, head):
        layout = layout_from_model(model)
        inside = {n for g in layout.groups for n in g.full_names()}
        in_layers = set().union(*(full for full, _ in module_groups(fam, base)))
        outside = [n for n, _ in model.named_parameters() if n not in inside]
        assert outside, "a model always has parameters outside its layers"
        assert not any(("embed" in n or "wte" in n or "wpe" in n) for n in inside)
        assert not any(n.startswith(("classifier", "lm_head", "score")) for n in inside)
        prefix = "" if model is base else fam.head_backbone + "."
        assert inside == {prefix + n for n in in_layers}


def test_layout_does_not_depend_on_the_class_prefix(family):
    fam, base, head = family
    a, b = layout_from_model(base), layout_from_model(head)
    assert a.hash == b.hash and a.groups[0].prefix != b.groups[0].prefix
    assert b.groups[0].prefix.startswith(fam.head_backbone + ".")
    # The same weights flatten to the same rows from either model.
    rows_a = flatten_state(base.state_dict(), a)
    rows_b = flatten_state(head.state_dict(), a)
    for g in a.group_names:
        np.testing.assert_array_equal(rows_a[g], rows_b[g])


def test_state_dict_and_model_give_the_same_layout(family):
    _, base, head = family
    for model in (base, head):
        assert layout_from_state_dict(model.state_dict()).hash == layout_from_model(model).hash


def test_flattened_rows_hold_each_parameter_at_its_offset(family):
    _, base, _ = family
    layout = layout_from_model(base)
    params = dict(base.named_parameters())
    rows = flatten_state(base.state_dict(), layout)
    for group in layout.groups:
        for spec, full in zip(group.params, group.full_names(), strict=True):
            np.testing.assert_array_equal(
                rows[group.name][spec.offset : spec.offset + spec.numel],
                params[full].detach().numpy().reshape(-1),
            )


def test_parameter_order_of_the_source_does_not_matter(family):
    # safetensors files list tensors sorted by name, not in model order.
    _, base, head = family
    layout = layout_from_model(base)
    state = head.state_dict()
    keys = list(state)
    random.Random(0).shuffle(keys)
    shuffled = {k: state[k] for k in keys}
    assert layout_from_state_dict(shuffled).hash != layout.hash
    ref = flatten_state(base.state_dict(), layout)
    got = flatten_state(shuffled, layout)
    for g in layout.group_names:
        np.testing.assert_array_equal(got[g], ref[g])


def test_global_rule_is_one_group_of_all_layers(family):
    fam, base, head = family
    layout = layout_from_model(base, "global")
    assert layout.rule == f"global:{fam.rule}"
    assert layout.group_names == ["encoder"]
    assert layout.total_size == sum(n for _, n in module_groups(fam, base))
    assert layout_from_model(head, "global").hash == layout.hash
    # The layer index stays in the relative names, so the two layers do not collide.
    names = [p.name for p in layout.groups[0].params]
    assert len(set(names)) == len(names)
    per_layer = layout_from_model(base)
    row = flatten_state(head.state_dict(), layout)["encoder"]
    rows = flatten_state(base.state_dict(), per_layer)
    np.testing.assert_array_equal(row, np.concatenate([rows[g] for g in per_layer.group_names]))


def test_layout_survives_json(family):
    _, base, _ = family
    for rule in ("auto", "global"):
        layout = layout_from_model(base, rule)
        again = Layout.from_dict(json.loads(json.dumps(layout.to_dict())))
        assert again == layout and again.hash == layout.hash


# ------------------------------------------------------------------------- regex rules
@pytest.fixture(scope="module")
def bert_pair():
    torch.manual_seed(1)
    config = transformers.BertConfig(vocab_size=100, **TINY)
    base = transformers.BertModel(config).eval()
    head = transformers.BertForSequenceClassification(config).eval()
    head.bert.load_state_dict(base.state_dict())
    return base, head


def test_regex_with_a_layer_capture(bert_pair):
    base, head = bert_pair
    rule = r"regex:encoder\.layer\.(\d+)\.attention\."
    layout = layout_from_model(base, rule)
    assert layout.group_names == ["0", "1"]
    for i, group in enumerate(layout.groups):
        attention = base.encoder.layer[i].attention
        assert group.size == sum(p.numel() for p in attention.parameters())
        assert all(n.startswith(f"encoder.layer.{i}.attention.") for n in group.full_names())
    assert layout_from_model(head, rule).hash == layout.hash


def test_regex_group_spanning_layers(bert_pair):
    base, head = bert_pair
    rule = r"regex:\.(intermediate)\."
    layout = layout_from_model(base, rule)
    assert layout.group_names == ["intermediate"]
    (group,) = layout.groups
    assert [p.name for p in group.params] == [
        "0.intermediate.dense.weight",
        "0.intermediate.dense.bias",
        "1.intermediate.dense.weight",
        "1.intermediate.dense.bias",
    ]
    other = layout_from_model(head, rule)
    assert other.hash == layout.hash and other.groups[0].prefix == "bert.encoder.layer."
    # Each layer's tensor lands in its own slot (no layer read twice).
    row = flatten_state(head.state_dict(), layout)["intermediate"]
    expected = np.concatenate(
        [
            p.detach().numpy().reshape(-1)
            for i in (0, 1)
            for p in base.encoder.layer[i].intermediate.parameters()
        ]
    )
    np.testing.assert_array_equal(row, expected)


def test_regex_with_two_captures_names_groups_by_both(bert_pair):
    base, _ = bert_pair
    layout = layout_from_model(base, r"regex:layer\.(\d+)\.(attention|output)\.")
    assert layout.group_names == ["0.attention", "0.output", "1.attention", "1.output"]


def test_regex_without_capture_is_one_group(bert_pair):
    base, head = bert_pair
    layout = layout_from_model(base, r"regex:LayerNorm")
    assert layout.group_names == ["group"]
    assert layout_from_model(head, r"regex:LayerNorm").hash == layout.hash
    expected = sum(p.numel() for n, p in base.named_parameters() if "LayerNorm" in n)
    assert layout.total_size == expected  # the embeddings' LayerNorm is matched too


# ----------------------------------------------------------------------------- errors
def test_a_different_model_is_a_layout_mismatch(bert_pair):
    base, _ = bert_pair
    layout = layout_from_model(base)
    wider = transformers.BertModel(
        transformers.BertConfig(vocab_size=100, **{**TINY, "intermediate_size": 48})
    )
    with pytest.raises(LayoutMismatch, match=r"intermediate\.dense\.weight.*shape"):
        flatten_state(wider.state_dict(), layout)
    deeper = transformers.BertModel(
        transformers.BertConfig(vocab_size=100, **{**TINY, "num_hidden_layers": 3})
    )
    with pytest.raises(LayoutMismatch, match=r"unexpected groups \['layer.2'\]"):
        flatten_state(deeper.state_dict(), layout)
    state = dict(base.state_dict())
    del state["encoder.layer.1.output.dense.bias"]
    with pytest.raises(LayoutMismatch, match="no parameter 'output.dense.bias'"):
        flatten_state(state, layout)


@pytest.mark.parametrize(
    ("rule", "match"),
    [
        ("t5", "unknown grouping rule"),
        ("regex:layer.(", "does not compile"),
        ("regex:nothing-matches-this", "matched none"),
        ("gpt2", "matched none"),
    ],
)
def test_bad_rules_are_invalid_input(bert_pair, rule, match):
    base, _ = bert_pair
    with pytest.raises(InvalidInput, match=match):
        layout_from_model(base, rule)


def test_auto_needs_a_known_pattern():
    with pytest.raises(InvalidInput, match="regex"):
        build_layout([("blocks.0.w", (3,)), ("blocks.1.w", (3,))])


def test_groups_are_in_numeric_order():
    shapes = [(f"encoder.layer.{i}.w", (2,)) for i in (10, 2, 0, 11, 1)]
    layout = build_layout(shapes)
    assert layout.group_names == ["layer.0", "layer.1", "layer.2", "layer.10", "layer.11"]
    layout = build_layout(shapes, r"regex:layer\.(\d+)\.")
    assert layout.group_names == ["0", "1", "2", "10", "11"]
