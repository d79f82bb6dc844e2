"""The end-to-end demo behind `tinysub demo`, on an embedded default (local disk, no server).

1. Fine-tune a tiny randomly initialised BERT classifier on a synthetic task with the HF Trainer,
   capturing theta0 and one trajectory row per epoch straight into a Zarr store.
2. Compute its layer-wise task basis (exact Gram route), and its global basis.
3. Report the spectrum, the energy captured and where everything is.

The synthetic task is learnable but not trivial: a sequence is positive when it holds more
tokens from the lower half of the vocabulary than from the upper half.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class DemoConfig:
    workdir: Path = Path(".tinysub/demo")
    epochs: int = 16
    train_size: int = 256
    seq_len: int = 16
    vocab: int = 64
    hidden: int = 64
    layers: int = 2
    rank: int = 8
    seed: int = 0
    executor: str = "local"


def synthetic_task(n: int, seq_len: int, vocab: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    # Tokens 0..3 are reserved ([PAD], [CLS], [SEP], [UNK] in a BERT vocabulary).
    ids = rng.integers(4, vocab, size=(n, seq_len))
    ids[:, 0] = 1
    low = (ids[:, 1:] < 4 + (vocab - 4) // 2).sum(axis=1)
    labels = (low > (seq_len - 1) / 2).astype(np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "labels": labels}


class _ArrayDataset:
    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.arrays = arrays

    def __len__(self) -> int:
        return len(self.arrays["labels"])

    def __getitem__(self, i: int) -> dict:
        import torch

        return {k: torch.as_tensor(v[i]) for k, v in self.arrays.items()}


def train_with_trajectory(cfg: DemoConfig, store_url: str):
    """Fine-tune the tiny model, writing theta0 and a row per epoch into `store_url`."""
    import torch
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        PrinterCallback,
        Trainer,
        TrainingArguments,
    )

    from storage.ingest import TrajectoryCallback

    torch.manual_seed(cfg.seed)
    model = BertForSequenceClassification(
        BertConfig(
            vocab_size=cfg.vocab,
            hidden_size=cfg.hidden,
            num_hidden_layers=cfg.layers,
            num_attention_heads=4,
            intermediate_size=2 * cfg.hidden,
            max_position_embeddings=cfg.seq_len + 2,
            num_labels=2,
        )
    )
    train = _ArrayDataset(synthetic_task(cfg.train_size, cfg.seq_len, cfg.vocab, cfg.seed))
    dev = _ArrayDataset(synthetic_task(256, cfg.seq_len, cfg.vocab, cfg.seed + 1))

    def accuracy(pred) -> dict:
        return {"accuracy": float((pred.predictions.argmax(-1) == pred.label_ids).mean())}

    args = TrainingArguments(
        output_dir=str(cfg.workdir / "trainer"),
        num_train_epochs=cfg.epochs,
        per_device_train_batch_size=32,
        per_device_eval_batch_size=128,
        learning_rate=1e-3,
        eval_strategy="epoch",
        save_strategy="no",
        logging_strategy="epoch",
        report_to=[],
        use_cpu=True,
        seed=cfg.seed,
        disable_tqdm=True,
    )
    # A fresh trajectory per demo run: the callback would otherwise resume an old store.
    shutil.rmtree(store_url, ignore_errors=True)
    callback = TrajectoryCallback(store_url, model_name="tinysub-demo/tiny-bert", rule="bert")
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=dev,
        compute_metrics=accuracy,
        callbacks=[callback],
    )
    # The demo prints its own summary; the Trainer's per-epoch dict printing is noise here.
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    return trainer.evaluate()


def run_demo(cfg: DemoConfig, progress=None) -> dict:
    """Run the whole demo; returns a summary dict (also what the CLI prints)."""
    from storage.trajectory import TrajectoryStore
    from worker.executors import make_executor
    from worker.svd.bases import task_basis

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cfg.workdir.mkdir(parents=True, exist_ok=True)
    store_url = str(cfg.workdir / "trajectory")
    metrics = train_with_trajectory(cfg, store_url)
    store = TrajectoryStore.open(store_url)
    out = {"trajectory": store.summary(), "eval": metrics, "bases": {}}
    with make_executor(cfg.executor) as ex:
        for kind, scope in (("task", "layer"), ("global", "global")):
            report = task_basis(
                store_url,
                str(cfg.workdir / "bases" / kind),
                cfg.rank,
                mode="delta",
                scope=scope,
                executor=ex,
                overwrite=True,
                progress=progress,
            )
            out["bases"][kind] = {"summary": report.bases[0].summary(), "seconds": report.seconds}
    return out
