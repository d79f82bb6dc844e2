"""Tiny saved training runs: a pre-trained BERT folder and `checkpoint-<step>/` folders.

The expected trajectory rows are computed from the module tree (`encoder.layer[i].parameters()`
concatenated), independently of the layout code under test.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

TINY = dict(
    vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
)


@dataclass
class Run:
    base: Path  # save_pretrained folder of the pre-trained BertModel (theta0)
    folder: Path  # holds checkpoint-<step>/
    steps: list[int]
    rows: list[dict[str, np.ndarray]] = field(default_factory=list)  # theta0 then checkpoints
    metrics: list[dict[str, float]] = field(default_factory=list)


def layer_rows(model) -> dict[str, np.ndarray]:
    bert = model.bert if hasattr(model, "bert") else model
    return {
        f"layer.{i}": np.concatenate(
            [p.detach().float().numpy().reshape(-1) for p in layer.parameters()]
        )
        for i, layer in enumerate(bert.encoder.layer)
    }


def save_weights(model, folder: Path, fmt: str) -> None:
    import torch

    if fmt == "safetensors":
        model.save_pretrained(folder)
    elif fmt == "sharded":
        model.save_pretrained(folder, max_shard_size="40KB")
        assert (folder / "model.safetensors.index.json").exists()
    elif fmt == "bin":
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    else:
        raise ValueError(fmt)


def make_run(
    root: Path,
    steps: tuple[int, ...] = (10, 20, 30),
    *,
    fmt: str = "safetensors",
    seed: int = 0,
    dtype: str = "float32",
    nan_at: int | None = None,
    config_overrides: dict | None = None,
) -> Run:
    """theta0 plus one checkpoint per step, each a random step away from the previous one."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config = transformers.BertConfig(**{**TINY, **(config_overrides or {})})
    base = transformers.BertModel(config)
    run = Run(base=root / "base", folder=root / "run", steps=list(steps))
    save_weights(base, run.base, "safetensors")
    run.rows.append(layer_rows(base))
    run.metrics.append({})

    model = transformers.BertForSequenceClassification(config)
    model.bert.load_state_dict(base.state_dict(), strict=False)
    model = model.to(getattr(torch, dtype))
    history = []
    for n, step in enumerate(steps):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))
            if step == nan_at:
                model.bert.encoder.layer[1].output.dense.weight[3, 4] = float("nan")
        history.append({"loss": 1.0 / (n + 1), "learning_rate": 1e-3, "step": step})
        history.append({"eval_loss": 2.0 / (n + 1), "eval_accuracy": 0.5, "step": step})
        folder = run.folder / f"checkpoint-{step}"
        save_weights(model, folder, fmt)
        state = {"global_step": step, "epoch": (n + 1) / 2, "log_history": list(history)}
        (folder / "trainer_state.json").write_text(json.dumps(state))
        run.rows.append(layer_rows(model))
        run.metrics.append({"loss": 1.0 / (n + 1), "learning_rate": 1e-3, **history[-1]})
        run.metrics[-1].pop("step")
    return run
