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
