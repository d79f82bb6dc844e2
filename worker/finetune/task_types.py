"""The data a fine-tuning run trains and scores on: `Examples` (texts, labels, optional pairs or
responses) and `Task` (its train, dev and tuning splits), with the problem kinds they serve."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

PROBLEMS = ("classification", "regression", "causal_lm")
CAUSAL_LM = "causal_lm"
LM_METRICS = ("perplexity", "loss")


@dataclass(frozen=True)
class Examples:
    texts: tuple[str, ...]
    labels: np.ndarray  # (n,) int64 class ids or float32 scores
    text_pairs: tuple[str, ...] | None = None
    # Causal LM instruction data: the response that follows texts[i] (the prompt), the only
    # part the loss is taken on. None for plain text.
    responses: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def take(self, idx: Sequence[int] | np.ndarray) -> Examples:
        idx = np.asarray(idx, dtype=np.int64)
        return Examples(
            tuple(self.texts[i] for i in idx),
            self.labels[idx],
            tuple(self.text_pairs[i] for i in idx) if self.text_pairs else None,
            tuple(self.responses[i] for i in idx) if self.responses else None,
        )


@dataclass(frozen=True)
class Task:
    name: str
    problem: str  # classification | regression | causal_lm
    metric: str  # the primary metric: accuracy | matthews | pearson | perplexity
    label_names: tuple[str, ...] | None
    train: Examples
    dev: Examples
    source: str
    tune: Examples | None = None

    @property
    def num_labels(self) -> int:
        return 1 if self.problem == "regression" else len(self.label_names or ())

    def describe(self) -> dict:
        extra = {}
        if self.problem == CAUSAL_LM:
            extra["format"] = "prompt-response" if self.train.responses else "text"
        return {
            "task": self.name,
            "problem": self.problem,
            "metric": self.metric,
            "labels": list(self.label_names) if self.label_names else None,
            "train_size": len(self.train),
            "dev_size": len(self.dev),
            "tune_size": len(self.tune) if self.tune is not None else 0,
            "source": self.source,
            **extra,
        }
