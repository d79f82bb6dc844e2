"""Causal language modelling: token batches whose labels are the text itself, loss and perplexity.

A plain text trains on every token: ``tokenizer(text)`` (with the BOS that Llama-style
tokenizers add) followed by EOS. An instruction pair trains on the response only: the prompt is
``tokenizer(prompt)``, the response ``tokenizer(response, add_special_tokens=False)`` + EOS is
appended to it (put any separator, a space or "\\n### Response:", in the data), and the prompt's
labels are -100, so the loss never asks the model to predict the prompt. The model shifts the
labels by one itself (``labels[t]`` is predicted from the tokens before t).

Truncation to ``max_length``: a plain text keeps its first tokens; a pair keeps at most
``max_length - 1`` response tokens and the end of the prompt (the part next to the response).
Batches are right-padded (pad labels -100); generation pads on the left.

The same pieces serve the worker's training loop (`lm_batch`) and the Hugging Face `Trainer`
(`tokenize_examples` as the dataset, `LMCollator` as its data collator).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from storage.errors import InvalidInput
from worker.finetune.data import Examples

IGNORE = -100  # the label cross-entropy skips (transformers' ignore_index)


def tokenize_example(
    tokenizer, text: str, response: str | None, max_length: int
) -> dict[str, list[int]]:
    """input_ids and labels of one example (see the module docstring)."""
    eos = tokenizer.eos_token_id
    ids = list(tokenizer(text)["input_ids"])
    if response is None:
        if eos is not None and (not ids or ids[-1] != eos):
            ids.append(eos)
        ids = ids[:max_length]
        return {"input_ids": ids, "labels": list(ids)}
    answer = list(tokenizer(response, add_special_tokens=False)["input_ids"])
    if eos is not None:
        answer.append(eos)
    answer = answer[: max_length - 1]
    prompt = ids[-(max_length - len(answer)) :] if ids else []
    return {"input_ids": prompt + answer, "labels": [IGNORE] * len(prompt) + answer}


def tokenize_examples(tokenizer, examples: Examples, max_length: int) -> list[dict]:
    """Every example tokenized: a list of {input_ids, labels} (a `Trainer` dataset)."""
    responses = examples.responses or (None,) * len(examples)
    return [
        tokenize_example(tokenizer, text, response, max_length)
        for text, response in zip(examples.texts, responses, strict=True)
    ]


def pad_id(tokenizer) -> int:
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if value is not None:
            return int(value)
    return 0


class LMCollator:
    """Right-pads tokenized examples into input_ids, attention_mask and labels (-100 on pads)."""

    def __init__(self, tokenizer) -> None:
        self.pad = pad_id(tokenizer)

    def __call__(self, features: Sequence[dict]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), self.pad, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            ids[i, :n] = torch.as_tensor(f["input_ids"])
            labels[i, :n] = torch.as_tensor(f["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def lm_batch(
    tokenizer, examples: Examples, idx: Sequence[int], max_length: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """The padded batch of examples[idx] on `device`."""
    sub = examples.take(list(idx))
    batch = LMCollator(tokenizer)(tokenize_examples(tokenizer, sub, max_length))
    if not bool((batch["labels"][:, 1:] != IGNORE).any()):
        raise InvalidInput(
            "a batch has no token to predict: its texts are shorter than two tokens, or "
            "max_length leaves no room for the responses"
        )
    return {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def evaluate_lm(
    model: nn.Module, tokenizer, examples: Examples, max_length: int, batch_size: int
) -> dict[str, float]:
    """Mean next-token loss over every target token of `examples` (prompts excluded), its
    perplexity exp(loss), and the number of target tokens. Tokens are weighted equally, so the
    result does not depend on the batch size."""
    device = next(model.parameters()).device
    if hasattr(model, "merge"):
        model = model.merge()  # V theta once, not once per batch
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for a in range(0, len(examples), batch_size):
        idx = range(a, min(a + batch_size, len(examples)))
        sub = examples.take(list(idx))
        batch = LMCollator(tokenizer)(tokenize_examples(tokenizer, sub, max_length))
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        targets = batch["labels"][:, 1:]  # (b, L-1): token t+1 is predicted at t
        nll = F.cross_entropy(
            logits[:, :-1].float().reshape(-1, logits.shape[-1]),
            targets.reshape(-1),
            ignore_index=IGNORE,
            reduction="sum",
        )
        total += float(nll)
        count += int((targets != IGNORE).sum())
    model.train(was_training)
    if count == 0:
        raise InvalidInput("the held-out split has no token to predict")
    loss = total / count
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "tokens": float(count)}


@torch.no_grad()
def generate(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str],
    max_new_tokens: int = 20,
    *,
    skip_special_tokens: bool = True,
    **kwargs,
) -> list[str]:
    """Greedy continuations of `prompts` (a subspace model generates as its merged copy);
    `kwargs` go to `model.generate`."""
    if hasattr(model, "merge"):
        model = model.merge()
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # a decoder continues from the last position
    try:
        enc = tokenizer(list(prompts), return_tensors="pt", padding=True).to(device)
    finally:
        tokenizer.padding_side = side
    settings = {
        "do_sample": False,
        "max_new_tokens": max_new_tokens,
        "pad_token_id": pad_id(tokenizer),
    }
    out = model.generate(**enc, **{**settings, **kwargs})
    model.train(was_training)
    new = out[:, enc["input_ids"].shape[1] :]
    return tokenizer.batch_decode(new, skip_special_tokens=skip_special_tokens)
