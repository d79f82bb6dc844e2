"""run.json: the record of one fine-tuning run, its artefacts, and its report to the registry.

The record keeps the basis twice: ``basis``, the reference the subspace was built from (kind,
scope, task, version, per-layer shape and sha256, where it came from), and ``basis_ref``, the
same basis as a `client.refs.BasisRef` (task, kind, version, per-layer sha256) that can be
pulled again exactly; None for generated bases and full-space runs. `read_run` fills
``basis_ref`` in for records written before it existed.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import torch

from client.refs import BasisRef
from storage.errors import InvalidInput, NotFound, TinysubError
from worker.finetune import diagnostics, outliers
from worker.finetune.causal import generate
from worker.finetune.data import CAUSAL_LM, Task
from worker.finetune.models import LoadedModel
from worker.finetune.reparam import SubspaceModel
from worker.finetune.spec import RunSpec
from worker.finetune.train import TrainResult

if TYPE_CHECKING:
    from storage.layout import Layout

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
RUN_FORMAT = "tinysub.run/1"
SAMPLES = 3  # greedy continuations of held-out prompts that a causal-LM run records


def build_record(
    spec: RunSpec,
    task: Task,
    loaded: LoadedModel,
    layout: Layout,
    result: TrainResult,
    held_info: dict[str, Any] | None,
    store: Any,
    started: float,
) -> dict[str, Any]:
    """run.json's fields common to every method (the key order is run.json's)."""
    return {
        "format": RUN_FORMAT,
        "task": task.name,
        "method": spec.method,
        "seed": spec.train.seed,
        "rank": None,
        "metric": task.metric,
        "score": result.metrics.get(task.metric),
        "metrics": result.metrics,
        "model": loaded.name,
        "layout_hash": layout.hash,
        "basis": None,
        "basis_ref": None,
        "data": {**task.describe(), "split_seed": spec.split_seed, "eval_split": spec.eval_split},
        "train": {**spec.train.to_dict(), **result.to_dict()},
        "hold_zero": held_info,
        "trajectory": store.url if store is not None else None,
        "started_at": started,
        "seconds": time.time() - started,
    }


def add_model_details(
    record: dict[str, Any], spec: RunSpec, task: Task, model: torch.nn.Module, tokenizer: Any
) -> None:
    """Add what depends on the kind of run: a causal LM's sample continuations, a subspace
    run's rank, basis reference (and its BasisRef) and theta summary (how far the run went)."""
    if task.problem == CAUSAL_LM:
        record["samples"] = _samples(model, tokenizer, task.dev)
    if isinstance(model, SubspaceModel):
        record["rank"] = next(iter(model.subspace_theta.values())).shape[1]
        record["basis"] = model.subspace_reference
        record["basis_ref"] = ref_of(record["basis"])
        record["subspace"] = spec.subspace.to_dict()
        # |theta_k|, each coordinate's size and |V theta| per layer: how far the run went.
        record["theta"] = diagnostics.theta_summary(model)


def _samples(model, tokenizer, examples, n: int = SAMPLES) -> list[dict[str, str]]:
    """Greedy continuations of the first held-out prompts (a plain text's first four words)."""
    n = min(n, len(examples))
    if examples.responses:
        prompts = list(examples.texts[:n])
    else:
        prompts = [" ".join(t.split()[:4]) for t in examples.texts[:n]]
    outputs = generate(model, tokenizer, prompts, max_new_tokens=20)
    return [{"prompt": p, "output": o} for p, o in zip(prompts, outputs, strict=True)]


def post_run(spec: RunSpec, record: dict[str, Any], source: Any) -> dict[str, Any]:
    """Report the run to the registry's /v1/runs so results are tracked per basis version.

    The run is filed under the registry task that owns the basis (or --task for full and
    freeze runs). A registry that refuses or cannot be reached does not lose the run: it is
    still returned and written to run.json, with the reason recorded.
    """
    # The HTTP client is an optional install (tinysub[client]): loaded only to post.
    from client import Client  # noqa: PLC0415 - client extra (tenacity) is optional

    registry = spec.registry
    assert registry is not None and spec.basis_ref is not None  # only registry runs post
    client = getattr(source, "client", None) or Client(
        registry.url, token=registry.token, cache_dir=registry.cache_dir
    )
    # The basis the run trained in, if it came from the registry (not a generated one).
    trained_in = None
    if (record.get("basis") or {}).get("registry") and record.get("basis_ref"):
        trained_in = BasisRef.from_dict(record["basis_ref"])
    fields: dict[str, Any] = {
        "task_id": trained_in.task if trained_in else spec.basis_ref.task,
        "method": spec.method,
        "seed": int(spec.train.seed),
        "params": {
            "data_task": record["task"],
            "rank": record["rank"],
            "model": record["model"],
            "metric": record["metric"],
        },
        "metrics": {
            k: float(v)
            for k, v in record["metrics"].items()
            if isinstance(v, int | float) and np.isfinite(v)
        },
        "seconds": float(record["seconds"]),
    }
    if trained_in is not None:
        fields.update(
            basis_task_id=trained_in.task,
            basis_kind=trained_in.kind,
            basis_version=trained_in.version,
        )
    try:
        return {"posted": True, **client.create_run(**fields)}
    except (TinysubError, httpx.HTTPError) as exc:
        log.warning("the registry did not take the run: %s", exc)
        return {"posted": False, "error": str(exc)}


def write_outputs(
    spec: RunSpec,
    record: dict[str, Any],
    model: torch.nn.Module,
    loaded: LoadedModel,
    layout: Layout,
) -> None:
    """Write the run folder: theta and outliers (subspace runs), tokenizer, model, run.json."""
    assert spec.out is not None
    os.makedirs(spec.out, exist_ok=True)
    if isinstance(model, SubspaceModel):
        model.save_subspace(
            os.path.join(spec.out, "subspace"),
            meta={"task": record["task"], "seed": record["seed"], "model": record["model"]},
        )
        with torch.no_grad():
            updates = {g: u.detach().cpu() for g, u in model.updates().items()}
        found = outliers.find_outliers(updates, spec.sigma)
        rep = outliers.save(spec.out, found, layout, updates)
        record["outliers"] = {
            "sigma": rep["sigma"],
            "total_count": rep["total_count"],
            "total_fraction": rep["total_fraction"],
            "expected_gaussian_fraction": rep["expected_gaussian_fraction"],
        }
    # The tokenizer is small and makes the run rebuildable (tiny models build theirs from data).
    loaded.tokenizer.save_pretrained(os.path.join(spec.out, "tokenizer"))
    if spec.save_model:
        merged = model.merge() if isinstance(model, SubspaceModel) else model
        merged.save_pretrained(os.path.join(spec.out, "model"))
        loaded.tokenizer.save_pretrained(os.path.join(spec.out, "model"))
    tmp = os.path.join(spec.out, RUN_FILE + ".tmp")
    with open(tmp, "w") as f:
        json.dump(record, f, indent=2, default=str)
    os.replace(tmp, os.path.join(spec.out, RUN_FILE))


def ref_of(reference: dict[str, Any] | None) -> dict[str, Any] | None:
    """run.json's ``basis_ref``: the BasisRef of a stored basis's reference, else None."""
    ref = BasisRef.from_reference(reference)
    return ref.to_dict() if ref is not None else None


def read_run(path: str) -> dict[str, Any]:
    """A run folder's run.json, with fields renamed or added since filled in."""
    file = os.path.join(path, RUN_FILE)
    if not os.path.exists(file):
        raise NotFound(f"no run at {path} (no {RUN_FILE})")
    with open(file) as f:
        record = json.load(f)
    if "dim" in record and "rank" not in record:  # written before `dim` was renamed `rank`
        record["rank"] = record.pop("dim")
    if "basis_ref" not in record:  # written before the BasisRef was recorded
        try:
            record["basis_ref"] = ref_of(record.get("basis"))
        except InvalidInput:  # an old reference a ref cannot name: the run still reads
            record["basis_ref"] = None
    return record
