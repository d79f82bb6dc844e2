import itertools

import numpy as np
import pytest
import torch

from storage.arrays import flatten_state
from storage.errors import InvalidInput
from storage.layout import build_layout, layout_from_model
from tests.worker.finetune.conftest import make_model
from worker.finetune import outlier_controls as oc
from worker.finetune import outliers

BERT = {
    "attention.self.query.weight": "attention.query",
    "attention.self.query.bias": "attention.query",
    "attention.self.key.weight": "attention.key",
    "attention.self.key.bias": "attention.key",
    "attention.self.value.weight": "attention.value",
    "attention.self.value.bias": "attention.value",
    "attention.output.dense.weight": "attention.output",
    "attention.output.dense.bias": "attention.output",
    "attention.output.LayerNorm.weight": "layernorm.gain",
    "attention.output.LayerNorm.bias": "layernorm.bias",
    "intermediate.dense.weight": "ffn.in",
    "intermediate.dense.bias": "ffn.in",
    "output.dense.weight": "ffn.out",
    "output.dense.bias": "ffn.out",
    "output.LayerNorm.weight": "layernorm.gain",
    "output.LayerNorm.bias": "layernorm.bias",
}
GPT2 = {
    "ln_1.weight": "layernorm.gain",
    "ln_1.bias": "layernorm.bias",
    "attn.c_attn.weight": "attention.qkv",
    "attn.c_attn.bias": "attention.qkv",
    "attn.c_proj.weight": "attention.output",
    "attn.c_proj.bias": "attention.output",
    "ln_2.weight": "layernorm.gain",
    "ln_2.bias": "layernorm.bias",
    "mlp.c_fc.weight": "ffn.in",
    "mlp.c_fc.bias": "ffn.in",
    "mlp.c_proj.weight": "ffn.out",
    "mlp.c_proj.bias": "ffn.out",
}
LLAMA = {
    "self_attn.q_proj.weight": "attention.query",
    "self_attn.q_proj.bias": "attention.query",  # Qwen2 has q/k/v biases
    "self_attn.k_proj.weight": "attention.key",
    "self_attn.v_proj.weight": "attention.value",
    "self_attn.o_proj.weight": "attention.output",
    "mlp.gate_proj.weight": "ffn.gate",
    "mlp.up_proj.weight": "ffn.in",
    "mlp.down_proj.weight": "ffn.out",
    "input_layernorm.weight": "layernorm.gain",
    "post_attention_layernorm.weight": "layernorm.gain",
}
OTHERS = {
    "attention.attn.q.weight": "attention.query",  # MPNet
    "attention.attn.o.bias": "attention.output",
    "attention.LayerNorm.weight": "layernorm.gain",
    "attention.query_key_value.weight": "attention.qkv",  # GPT-NeoX
    "attention.dense.weight": "attention.output",
    "mlp.dense_4h_to_h.bias": "ffn.out",
    "self_attn.out_proj.weight": "attention.output",  # OPT
    "self_attn_layer_norm.bias": "layernorm.bias",
    "fc1.weight": "ffn.in",
    "final_layer_norm.weight": "layernorm.gain",
    "self_attn.in_proj_weight": "attention.qkv",  # torch.nn.MultiheadAttention
    "bert.encoder.layer.3.attention.self.key.bias": "attention.key",  # a full name
    "attention.self.distance_embedding.weight": "other",
    "rotary_emb.inv_freq": "other",
}


@pytest.fixture(scope="module")
def bert():
    model = make_model("bert")
    return model, layout_from_model(model)


def _all_positions(layout, layer):
    return np.arange(layout.group(layer).size)


def _component_ranges(layout, layer, comp):
    group = layout.group(layer)
    return np.concatenate(
        [
            np.arange(s.offset, s.offset + s.numel)
            for s in group.params
            if oc.component_of(s.name) == comp
        ]
    )


@pytest.mark.parametrize("table", [BERT, GPT2, LLAMA, OTHERS], ids=["bert", "gpt2", "llama", "x"])
def test_component_of_maps_each_architecture(table):
    assert {name: oc.component_of(name) for name in table} == table
    assert set(table.values()) <= set(oc.COMPONENTS)


def test_tiny_bert_layers_have_no_unlabelled_parameters(bert):
    _, layout = bert
    names = [p.name for p in layout.group("layer.0").params]
    assert names == list(BERT)
    assert [oc.component_of(n) for n in names] == list(BERT.values())


def test_enrichment_of_positions_all_in_layernorm_gains_is_one_over_share(bert):
    _, layout = bert
    layers = layout.group_names
    gains = {g: np.flatnonzero(oc.layernorm_gain_mask(layout, g))[::3] for g in layers}
    rows = {r["component"]: r for r in oc.enrichment(layout, gains)}
    size = sum(layout.group(g).size for g in layers)
    gain_params = 2 * len(layers) * 32  # two LayerNorms of width 32 per layer
    share = gain_params / size
    total = sum(p.size for p in gains.values())
    assert rows["layernorm.gain"]["params"] == gain_params
    assert rows["layernorm.gain"]["count"] == total and rows["layernorm.gain"]["fraction"] == 1
    assert rows["layernorm.gain"]["enrichment"] == pytest.approx(1 / share)
    assert rows["layernorm.gain"]["expected"] == pytest.approx(total * share)
    assert rows["layernorm.gain"]["z"] > 10
    others = [r for c, r in rows.items() if c != "layernorm.gain"]
    assert all(r["count"] == 0 and r["enrichment"] == 0 for r in others)
    assert sum(r["share"] for r in rows.values()) == pytest.approx(1)
    assert "attention.qkv" not in rows  # BERT has no fused projection
    counts = oc.component_counts(layout, gains)
    assert tuple(counts) == oc.COMPONENTS and counts["layernorm.gain"] == total


def test_enrichment_is_one_for_every_position_and_near_one_for_uniform(bert):
    _, layout = bert
    every = {g: _all_positions(layout, g) for g in layout.group_names}
    for row in oc.enrichment(layout, every):
        assert row["enrichment"] == pytest.approx(1) and row["fraction"] == row["share"]
    rng = np.random.default_rng(0)
    size = layout.group("layer.0").size
    uniform = {g: rng.choice(size, size=size // 2, replace=False) for g in layout.group_names}
    for row in oc.enrichment(layout, uniform):
        assert abs(row["z"]) < 5, row
        if row["params"] > 1000:
            assert row["enrichment"] == pytest.approx(1, abs=0.1)
    empty = oc.enrichment(layout, {"layer.0": np.array([], dtype=np.int64)})
    assert all(r["count"] == 0 and r["enrichment"] is None for r in empty)


def test_layernorm_gain_mask_and_split(bert):
    _, layout = bert
    mask = oc.layernorm_gain_mask(layout, "layer.1")
    group = layout.group("layer.1")
    expected = np.zeros(group.size, dtype=bool)
    for spec in group.params:
        if spec.name.endswith("LayerNorm.weight"):
            expected[spec.offset : spec.offset + spec.numel] = True
    np.testing.assert_array_equal(mask, expected)
    assert mask.sum() == 64
    gain_pos = np.flatnonzero(mask)
    positions = {"layer.1": np.array([gain_pos[5], 3, gain_pos[40], 7000, 3])}
    gains, rest = oc.split_positions(layout, positions)
    assert gains["layer.1"].tolist() == sorted([gain_pos[5], gain_pos[40]])
    assert rest["layer.1"].tolist() == [3, 7000]  # the duplicate counts once


def test_llama_layout_gains_are_the_rms_norm_weights():
    layout = build_layout(
        [
            ("model.layers.0.self_attn.q_proj.weight", (8, 8)),
            ("model.layers.0.mlp.down_proj.weight", (8, 16)),
            ("model.layers.0.input_layernorm.weight", (8,)),
            ("model.layers.0.post_attention_layernorm.weight", (8,)),
        ]
    )
    mask = oc.layernorm_gain_mask(layout, "layer.0")
    assert mask.sum() == 16 and mask[192:].all() and not mask[:192].any()


def test_control_masks_modes(bert):
    _, layout = bert
    gain_pos = np.flatnonzero(oc.layernorm_gain_mask(layout, "layer.0"))
    positions = {
        "layer.0": np.array([0, 1030, gain_pos[0], gain_pos[-1], 8000]),
        "layer.1": np.array([], dtype=np.int64),
    }
    prefix = "bert.encoder.layer."
    outlier = oc.control_masks(layout, positions, mode="outlier")
    reference = outliers.disable_masks(layout, positions)
    assert outlier.keys() == reference.keys()
    assert all(torch.equal(outlier[k], reference[k]) for k in outlier)
    ln = oc.control_masks(layout, positions, mode="outlier_ln")
    non_ln = oc.control_masks(layout, positions, mode="outlier_non_ln")
    assert set(ln) == {
        f"{prefix}0.attention.output.LayerNorm.weight",
        f"{prefix}0.output.LayerNorm.weight",
    }
    assert sum(int(m.sum()) for m in ln.values()) == 2
    assert sum(int(m.sum()) for m in non_ln.values()) == 3
    assert not set(ln) & set(non_ln)
    # ALL gains of the given layers, including layer.1, which has no outliers.
    gains = oc.control_masks(layout, positions, mode="ln_gains")
    assert sorted(gains) == sorted(
        f"{prefix}{i}.{part}.LayerNorm.weight"
        for i in (0, 1)
        for part in ("attention.output", "output")
    )
    assert all(bool(m.all()) for m in gains.values())
    rand = oc.control_masks(layout, positions, mode="random", seed=4)
    old = outliers.disable_masks(layout, positions, mode="random", seed=4)
    assert rand.keys() == old.keys() and all(torch.equal(rand[k], old[k]) for k in rand)
    with pytest.raises(InvalidInput, match="not one of"):
        oc.control_masks(layout, positions, mode="gains")
    with pytest.raises(InvalidInput, match="outside"):
        oc.control_masks(
            layout, {"layer.0": np.array([layout.group("layer.0").size])}, mode="outlier"
        )
    with pytest.raises(InvalidInput, match="outside"):
        oc.control_masks(layout, {"layer.0": np.array([-1])}, mode="random_matched")
    assert set(oc.CONTROL_MODES) >= {
        "outlier",
        "outlier_non_ln",
        "ln_gains",
        "random",
        "random_matched",
    }


def test_random_matched_keeps_the_composition_per_layer(bert):
    _, layout = bert
    rng = np.random.default_rng(1)
    positions = {
        "layer.0": np.concatenate(
            [
                rng.choice(
                    _component_ranges(layout, "layer.0", "layernorm.gain"), 20, replace=False
                ),
                rng.choice(
                    _component_ranges(layout, "layer.0", "attention.query"), 7, replace=False
                ),
                rng.choice(_component_ranges(layout, "layer.0", "ffn.out"), 30, replace=False),
            ]
        ),
        "layer.1": rng.choice(
            _component_ranges(layout, "layer.1", "attention.value"), 5, replace=False
        ),
    }
    drawn = oc.control_positions(layout, positions, mode="random_matched", seed=7)
    for layer in positions:
        want = oc.component_counts(layout, {layer: positions[layer]})
        assert oc.component_counts(layout, {layer: drawn[layer]}) == want
        assert np.unique(drawn[layer]).size == positions[layer].size  # no duplicates
    again = oc.control_positions(layout, positions, mode="random_matched", seed=7)
    other = oc.control_positions(layout, positions, mode="random_matched", seed=8)
    assert all(np.array_equal(drawn[k], again[k]) for k in drawn)
    assert any(not np.array_equal(drawn[k], other[k]) for k in drawn)
    # Not the outliers again: outside LayerNorm gains (64 of them) overlaps are rare.
    same = oc.overlap(positions, drawn)["total"]["intersection"]
    assert same < 20
    masks = oc.control_masks(layout, positions, mode="random_matched", seed=7)
    assert sum(int(m.sum()) for m in masks.values()) == 62
    # A component wholly taken is drawn wholly: every gain of the layer.
    full = {"layer.0": _component_ranges(layout, "layer.0", "layernorm.gain")}
    got = oc.control_positions(layout, full, mode="random_matched", seed=0)["layer.0"]
    np.testing.assert_array_equal(got, full["layer.0"])


def test_random_matched_is_uniform_within_the_component(bert):
    _, layout = bert
    pool = _component_ranges(layout, "layer.0", "attention.output")  # weight and bias
    hits = np.zeros(layout.group("layer.0").size)
    for seed in range(400):
        got = oc.control_positions(layout, {"layer.0": pool[:50]}, mode="random_matched", seed=seed)
        hits[got["layer.0"]] += 1
    inside = hits[pool]
    assert hits.sum() == inside.sum() == 400 * 50
    expected = 400 * 50 / pool.size  # per position
    # Bias entries (the last 32 of the pool) get drawn at the same rate as weight entries.
    assert inside[-32:].mean() == pytest.approx(expected, rel=0.25)
    assert inside.mean() == pytest.approx(expected)


def test_top_magnitude_overlap():
    rng = np.random.default_rng(2)
    size, m = 50_000, 500
    theta0 = {
        "a": rng.standard_normal(size),
        "b": torch.randn(size, generator=torch.Generator().manual_seed(0)),
    }
    top = {"a": np.argsort(-np.abs(theta0["a"]))[:m]}
    rep = oc.top_magnitude_overlap(top, theta0)
    assert rep["layers"][0]["fraction"] == 1.0 and rep["layers"][0]["hits"] == m
    assert rep["layers"][0]["expected"] == m / size
    # One position moved out of the top m: one miss.
    moved = {"a": np.append(top["a"][:-1], np.argmin(np.abs(theta0["a"])))}
    assert oc.top_magnitude_overlap(moved, theta0)["layers"][0]["hits"] == m - 1
    random = {"a": rng.choice(size, m, replace=False), "b": rng.choice(size, 4 * m, replace=False)}
    rep = oc.top_magnitude_overlap(random, theta0)
    for row in rep["layers"]:
        # hits ~ hypergeometric with mean m^2 / size (5 and 80): 5 standard deviations.
        mean = row["count"] ** 2 / size
        assert abs(row["hits"] - mean) < 5 * mean**0.5 + 1
        assert row["expected"] == row["count"] / size
    assert rep["total"]["count"] == 5 * m
    assert rep["total"]["expected"] == pytest.approx((m * m + 16 * m * m) / size / (5 * m))
    with pytest.raises(InvalidInput):
        oc.top_magnitude_overlap({"c": np.array([0])}, theta0)


def test_top_magnitude_overlap_counts_ties_at_the_threshold_as_inside(bert):
    model, layout = bert
    theta0 = flatten_state(model.state_dict(), layout)
    gains = {g: np.flatnonzero(oc.layernorm_gain_mask(layout, g))[:3] for g in layout.group_names}
    # A fresh model's gains are all 1.0, above every random weight: any 3 of them are top-3.
    rep = oc.top_magnitude_overlap(gains, theta0)
    assert rep["total"]["fraction"] == 1.0


def test_overlap_and_jaccard_on_hand_built_sets():
    a = {"l0": np.array([1, 2, 3, 4]), "l1": np.array([9])}
    b = {"l0": np.array([3, 4, 5]), "l2": np.array([0, 1])}
    rep = oc.overlap(a, b, sizes={"l0": 10, "l1": 10, "l2": 20})
    rows = {r["layer"]: r for r in rep["layers"]}
    assert [r["layer"] for r in rep["layers"]] == ["l0", "l1", "l2"]
    assert rows["l0"]["intersection"] == 2 and rows["l0"]["jaccard"] == pytest.approx(2 / 5)
    assert rows["l1"]["a"] == 1 and rows["l1"]["b"] == 0 and rows["l1"]["jaccard"] == 0
    assert rows["l0"]["expected_intersection"] == pytest.approx(4 * 3 / 10)
    assert rep["total"]["intersection"] == 2 and rep["total"]["jaccard"] == pytest.approx(2 / 8)
    assert rep["total"]["expected_intersection"] == pytest.approx(1.2)
    assert rep["total"]["expected_jaccard"] == pytest.approx(1.2 / (5 + 5 - 1.2))
    plain = oc.overlap(a, b)
    assert "expected_jaccard" not in plain["layers"][0]
    assert oc.overlap({"x": []}, {"x": []})["layers"][0]["jaccard"] is None
    with pytest.raises(InvalidInput):
        oc.overlap(a, b, sizes={"l0": 10})


@pytest.mark.parametrize(
    ("m", "n", "size"), [(2, 3, 7), (3, 3, 6), (4, 5, 8), (1, 0, 5), (6, 6, 6)]
)
def test_expected_jaccard_matches_enumeration(m, n, size):
    universe = range(size)
    values = [
        len(set(x) & set(y)) / len(set(x) | set(y))
        for x in itertools.combinations(universe, m)
        for y in itertools.combinations(universe, n)
    ]
    assert oc.expected_jaccard(m, n, size) == pytest.approx(np.mean(values), rel=1e-12)


def test_expected_jaccard_of_large_sparse_sets_is_near_mn_over_size():
    # Sets of 0.3% of a BERT-base layer: E[J] ~ E[I] / (m + n - E[I]).
    size, m = 7_087_872, 21_264
    e = m * m / size
    assert oc.expected_jaccard(m, m, size) == pytest.approx(e / (2 * m - e), rel=1e-3)
    assert oc.expected_jaccard(0, 0, 10) is None


def test_zero_weights_changes_exactly_the_masked_entries(bert):
    _, layout = bert
    model = make_model("bert", seed=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # 8543 is the last LayerNorm bias, 0 in a fresh model: counted, but nothing changes.
    positions = {"layer.0": np.array([0, 5, 4224, 8511, 8543]), "layer.1": np.array([100, 4300])}
    masks = oc.control_masks(layout, positions, mode="outlier")
    assert oc.zero_weights(model, masks) == 7
    after = model.state_dict()
    changed = 0
    for name, old in before.items():
        new = after[name]
        if name in masks:
            assert torch.all(new[masks[name]] == 0)
            assert torch.equal(new[~masks[name]], old[~masks[name]])
            changed += int((new != old).sum())
        else:
            assert torch.equal(new, old), name
    assert changed == 6
    flat = flatten_state(after, layout)
    assert all(flat[g][p].tolist() == [0.0] * p.size for g, p in positions.items())


def test_zero_weights_refuses_bad_masks_and_leaves_the_model_alone(bert):
    _, layout = bert
    model = make_model("bert", seed=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    name = "bert.encoder.layer.0.attention.self.query.weight"
    good = torch.ones(32, 32, dtype=torch.bool)
    with pytest.raises(InvalidInput, match="shape"):
        oc.zero_weights(
            model,
            {
                name: good,
                "bert.encoder.layer.0.attention.self.key.weight": torch.ones(3, dtype=torch.bool),
            },
        )
    with pytest.raises(InvalidInput, match="no parameter"):
        oc.zero_weights(model, {name: good, "bert.encoder.layer.9.attention.self.key.weight": good})
    with pytest.raises(InvalidInput, match="bool"):
        oc.zero_weights(model, {name: torch.ones(32, 32)})
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
