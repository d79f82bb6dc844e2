"""Decoder layouts: GPT-2 and Llama-style layers group, their parts classify and re-parameterize."""

from __future__ import annotations

import pytest
import torch

from storage.layout import layout_from_model
from tests.worker.finetune.conftest import ARCHS, make_causal_model, make_lm_batch, make_model
from worker.finetune.config import SubspaceConfig
from worker.finetune.methods import prepare
from worker.finetune.reparam import parameter_parts


def old_parameter_parts(model, layout) -> dict[str, str]:
    """The rule as it stood before decoders were supported (name-based)."""
    in_layers = {n for g in layout.groups for n in g.full_names()}
    parts = {}
    for name, _ in model.named_parameters():
        if name in in_layers:
            parts[name] = "layernorm" if "LayerNorm" in name or "layer_norm" in name else "encoder"
        elif ".embeddings." in f".{name}":
            parts[name] = "embeddings"
        elif ".encoder." in f".{name}":
            parts[name] = "encoder_other"
        else:
            parts[name] = "head"
    return parts


@pytest.mark.parametrize("arch", ARCHS)
def test_encoder_parts_are_unchanged(arch):
    model = make_model(arch)
    layout = layout_from_model(model)
    assert parameter_parts(model, layout) == old_parameter_parts(model, layout)


def _by_part(parts: dict[str, str]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for name, part in parts.items():
        out.setdefault(part, set()).add(name)
    return out


def test_gpt2_layers_and_parts():
    model = make_causal_model("gpt2")
    layout = layout_from_model(model)
    assert layout.rule == "gpt2" and layout.group_names == ["layer.0", "layer.1"]
    assert layout.groups[1].prefix == "transformer.h.1."
    parts = _by_part(parameter_parts(model, layout))
    assert parts["embeddings"] == {"transformer.wte.weight", "transformer.wpe.weight"}
    assert parts["encoder_other"] == {"transformer.ln_f.weight", "transformer.ln_f.bias"}
    assert parts["layernorm"] == {
        f"transformer.h.{i}.{ln}.{w}"
        for i in (0, 1)
        for ln in ("ln_1", "ln_2")
        for w in ("weight", "bias")
    }
    assert "head" not in parts  # lm_head is tied to wte: it trains with the embeddings
    assert model.lm_head.weight is model.get_parameter("transformer.wte.weight")
    assert len(parts["encoder"]) == 16 and all(".h." in n for n in parts["encoder"])
    assert sum(len(v) for v in parts.values()) == len(dict(model.named_parameters()))


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_llama_style_layers_and_parts(arch):
    model = make_causal_model(arch)
    layout = layout_from_model(model)
    assert layout.rule == "llama" and layout.group_names == ["layer.0", "layer.1"]
    assert layout.groups[0].prefix == "model.layers.0."
    parts = _by_part(parameter_parts(model, layout))
    assert parts["embeddings"] == {"model.embed_tokens.weight"}
    assert parts["encoder_other"] == {"model.norm.weight"}
    assert parts["head"] == {"lm_head.weight"}
    assert parts["layernorm"] == {
        f"model.layers.{i}.{n}.weight"
        for i in (0, 1)
        for n in ("input_layernorm", "post_attention_layernorm")
    }
    biases = {n for n in parts["encoder"] if n.endswith(".bias")}
    assert bool(biases) == (arch == "qwen2")  # Qwen2's q/k/v biases are layer parameters


def test_train_parts_select_decoder_parameters():
    model = make_causal_model("llama")
    sub = prepare("random", model, SubspaceConfig(rank=3, train_parts=("layernorm", "head")))
    trainable = {n for n, p in sub.named_parameters() if p.requires_grad}
    assert trainable == {
        "subspace_theta.layer_0",
        "subspace_theta.layer_1",
        "base.lm_head.weight",
        *{
            f"base.model.layers.{i}.{n}.weight"
            for i in (0, 1)
            for n in ("input_layernorm", "post_attention_layernorm")
        },
    }


def test_freeze_trains_the_embeddings_of_a_decoder():
    model = make_causal_model("gpt2")
    prepare("freeze", model, SubspaceConfig())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"transformer.wte.weight", "transformer.wpe.weight"}


def test_theta_zero_is_the_base_decoder(decoder):
    model = make_causal_model(decoder).eval()
    batch = make_lm_batch()
    with torch.no_grad():
        want = model(**batch)
    sub = prepare("random", model, SubspaceConfig(rank=4, init="zeros")).eval()
    with torch.no_grad():
        got = sub(**batch)
    assert torch.equal(got.logits, want.logits) and torch.equal(got.loss, want.loss)
    # Gradients reach theta through every layer, and the merged copy is a plain decoder.
    sub.train()
    sub(**batch).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in sub.subspace_theta.values())
    with torch.no_grad():
        sub.subspace_theta["layer_1"].normal_(0, 0.5)
        merged = sub.merge().eval()
        assert torch.allclose(merged(**batch).logits, sub.eval()(**batch).logits, atol=1e-5)
        assert not torch.allclose(merged(**batch).logits, want.logits)
