"""Run one job (in this process or a pool worker) and turn its run.json into a ledger record.

The record keeps what the report needs (the contract fields task, method, seed, dim, metric,
score, and the free-parameter counts, timings, outlier summary), not the whole run.json: the
run folder under DIR/work/runs/ still has everything.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import Any

import torch

from experiments.plan import Job
from worker.finetune.runner import run

PARENT_POLL_SECONDS = 1.0


def exit_with_parent(parent_pid: int, poll: float = PARENT_POLL_SECONDS) -> threading.Thread:
    """Exit this process as soon as `parent_pid` is gone.

    Why: a pool worker outlives a parent that is killed (SIGKILL, or SIGTERM before Python can
    clean up) and would go on training for minutes, holding the CPU that the next run needs.
    Polling the parent id catches every way the parent can die, which no signal handler does.
    """

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll)
        os._exit(1)

    thread = threading.Thread(target=watch, name="exit-with-parent", daemon=True)
    thread.start()
    return thread


def init_worker(threads: int, parent_pid: int | None = None) -> None:
    """Pool initializer: threads per process, quiet libraries; leave when the parent dies."""
    if parent_pid is not None:
        exit_with_parent(parent_pid)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers  # noqa: PLC0415 - after TOKENIZERS_PARALLELISM is set; slow

    torch.set_num_threads(max(1, threads))
    transformers.logging.set_verbosity_error()
    logging.getLogger("worker").setLevel(logging.WARNING)


def execute(job: Job) -> dict[str, Any]:
    return to_record(job, run(job.spec))


def to_record(job: Job, run: dict[str, Any]) -> dict[str, Any]:
    train = run.get("train", {})
    trainable = train.get("trainable") or {}
    record: dict[str, Any] = {
        "id": job.id,
        "phase": job.phase,
        "task": run["task"],
        "method": run["method"],
        "seed": run["seed"],
        # The ledger keeps the paper's name d ("dim"): its ids and committed results use it.
        "dim": run["rank"] if "rank" in run else run["dim"],
        "metric": run["metric"],
        "score": run["score"],
        "metrics": run["metrics"],
        "free_params": free_params(run),
        "trained_params": trainable.get("subspace", 0),
        "full_space_params": trainable.get("full_space", 0),
        "steps": train.get("steps"),
        "seconds": run["seconds"],
        "train_seconds": train.get("seconds"),
        "seconds_per_step": train.get("seconds_per_step"),
        "train_size": run["data"]["train_size"],
        "dev_size": run["data"]["dev_size"],
        "run_dir": job.spec.out,
        **job.meta,
    }
    short = (run.get("basis") or {}).get("short_layers")
    if short:
        record["short_layers"] = short  # layers whose basis had fewer columns than dim
    if train.get("curve"):
        record["curve"] = train["curve"]
    if train.get("losses"):
        record["losses"] = _thin(train["losses"])
    if run.get("theta"):
        record["theta"] = {
            layer: {k: v for k, v in row.items() if k in THETA_FIELDS}
            for layer, row in run["theta"].items()
        }
    if run.get("outliers"):
        record["outliers"] = {**run["outliers"], **_layer_stats(job.spec.out)}
    if run.get("hold_zero"):
        record["held_zero"] = run["hold_zero"]["count"]
    return record


THETA_FIELDS = ("theta_abs", "coord_abs", "update_norm", "relative_update")
MAX_LOSSES = 400


def _thin(losses: list[float]) -> list[float]:
    """At most MAX_LOSSES points: the ledger keeps a learning curve, not every step."""
    if len(losses) <= MAX_LOSSES:
        return [round(float(x), 5) for x in losses]
    idx = [round(i * (len(losses) - 1) / (MAX_LOSSES - 1)) for i in range(MAX_LOSSES)]
    return [round(float(losses[i]), 5) for i in idx]


def free_params(run: dict[str, Any]) -> int:
    """Free subspace parameters as both papers count them: d per layer (or d for one global
    theta), plus SAID's one scale per layer. The ensemble's h copies of theta are not counted:
    the model sees only their mean (see worker.finetune.config.SubspaceConfig)."""
    trained = int((run.get("train", {}).get("trainable") or {}).get("subspace", 0))
    sub = run.get("subspace")
    if not trained or not sub:
        return 0
    scales = len((run.get("basis") or {}).get("layers", {})) if sub.get("said") else 0
    return (trained - scales) // int(sub.get("ensemble", 1)) + scales


def _layer_stats(run_dir: str | None) -> dict[str, Any]:
    """Mean excess kurtosis and excess over the Gaussian 3-sigma count across layers: how
    spiky V theta is, which the bare count (0.27% for any Gaussian) does not show."""
    path = os.path.join(run_dir or "", "outliers.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        layers = json.load(f).get("layers", [])
    if not layers:
        return {}
    excess = [x["excess"] for x in layers if x.get("excess") is not None]
    return {
        "kurtosis_mean": sum(x["kurtosis"] for x in layers) / len(layers),
        "excess_mean": sum(excess) / len(excess) if excess else None,
    }
