"""Tiny randomly initialized encoders (BERT, RoBERTa, MPNet) and batches for the worker tests."""

from __future__ import annotations

import pytest
import torch

from worker.finetune.models import tiny_config

ARCHS = ("bert", "roberta", "mpnet")
VOCAB = 60


def make_model(arch: str, num_labels: int = 3, seed: int = 0, problem: str = "classification"):
    from transformers import AutoModelForSequenceClassification

    config = tiny_config(arch, VOCAB, num_labels, problem)
    # No dropout: the tests compare outputs and losses exactly.
    config.hidden_dropout_prob = 0.0
    config.attention_probs_dropout_prob = 0.0
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(config)


def make_batch(n: int = 8, length: int = 12, seed: int = 0, num_labels: int = 3) -> dict:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (n, length), generator=gen)
    mask = torch.ones_like(ids)
    mask[: n // 2, length - 3 :] = 0  # some padding
    ids[mask == 0] = 0
    labels = torch.randint(0, num_labels, (n,), generator=gen)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@pytest.fixture(params=ARCHS)
def arch(request) -> str:
    return request.param


DECODERS = ("gpt2", "llama", "qwen2")


def make_causal_model(arch: str, seed: int = 0):
    """A tiny randomly initialized decoder (vocab VOCAB, no dropout) for causal-LM tests."""
    from transformers import AutoModelForCausalLM

    from worker.finetune.models import tiny_causal_config

    config = tiny_causal_config(arch, VOCAB, pad_id=0, bos_id=2, eos_id=3)
    for key in ("resid_pdrop", "embd_pdrop", "attn_pdrop", "attention_dropout"):
        if hasattr(config, key):
            setattr(config, key, 0.0)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config)


def make_lm_batch(n: int = 6, length: int = 10, seed: int = 0) -> dict:
    """Right-padded token batch whose labels ignore the padding (-100)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, VOCAB, (n, length), generator=gen)
    mask = torch.ones_like(ids)
    mask[: n // 2, length - 3 :] = 0
    ids[mask == 0] = 0
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@pytest.fixture(params=DECODERS)
def decoder(request) -> str:
    return request.param
