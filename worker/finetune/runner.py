"""One fine-tuning run from a spec: data, model, method, training, evaluation, artefacts.

Every method goes through `run()` with the same data split, seeds and step budget, so a table of
full / freeze / random / intrinsic numbers compares like with like. The run folder holds:

    run.json            task, method, seed, rank, metric, score, metrics, basis reference, settings
    subspace/           theta (safetensors) + the reference to V (subspace methods)
    tokenizer/          the tokenizer (small; with theta it makes the run rebuildable)
    outliers.json/.npz  outlier dimensions of V theta (subspace methods)
    model/              the merged model via save_pretrained (with save_model=True)

Causal language models (``task_type="causal-lm"``: GPT-2, Llama, Mistral, Qwen and other
``AutoModelForCausalLM`` decoders) run through the same methods and re-parameterization; they
are scored by perplexity on the held-out split, and run.json keeps a few greedy continuations
of held-out prompts (``samples``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from storage.arrays import flatten_state
from storage.errors import InvalidInput, NotFound
from storage.layout import layout_from_model
from worker.finetune import diagnostics, outliers
from worker.finetune.causal import generate
from worker.finetune.config import SubspaceConfig
from worker.finetune.data import CAUSAL_LM, Examples, Task, load_task
from worker.finetune.methods import BASIS_KIND, METHODS, prepare
from worker.finetune.models import LoadedModel, load_model
from worker.finetune.outlier_controls import CONTROL_MODES, control_masks
from worker.finetune.reparam import SubspaceModel, parameter_parts
from worker.finetune.sources import BasisSource, RegistryBasisSource, StoreBasisSource
from worker.finetune.train import TrainConfig, TrainResult, seed_everything, train

if TYPE_CHECKING:
    from storage.layout import Layout

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
RUN_FORMAT = "tinysub.run/1"
# --task-type -> load_task's problem (None: classification or regression from the labels).
TASK_TYPES = {
    None: None,
    "auto": None,
    "classification": "classification",
    "regression": "regression",
    "causal-lm": CAUSAL_LM,
    CAUSAL_LM: CAUSAL_LM,
}
SAMPLES = 3  # greedy continuations of held-out prompts that a causal-LM run records


@dataclass
class RunSpec:
    task: str
    method: str
    model: str = "minilm"
    out: str | None = None
    subspace: SubspaceConfig = field(default_factory=SubspaceConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    # Where V comes from: a local basis store, or the registry by task ID.
    basis: str | None = None
    basis_task: str | None = None
    basis_kind: str | None = None
    basis_version: int | None = None
    basis_alias: str | None = None
    registry: str | None = None
    token: str | None = None
    # Data.
    split_seed: int = 0
    dev_fraction: float = 0.1
    train_size: int | None = None
    dev_size: int | None = None
    # A tuning split carved beside dev (see worker.finetune.data); eval_split="tune" scores the
    # run there instead of on dev, for choosing hyper-parameters without touching dev.
    tune_fraction: float = 0.0
    tune_size: int | None = None
    eval_split: str = "dev"
    # Extras.
    record_trajectory: str | None = None
    record_every: int = 10
    hold_zero_from: str | None = None
    hold_zero_mode: str = "outlier"
    sigma: float = 3.0
    save_model: bool = False
    # What the task is: None/auto (classification or regression from the labels),
    # classification, regression or causal-lm; the columns a causal-LM file's texts come from.
    task_type: str | None = None
    text_column: str | None = None
    prompt_column: str | None = None
    response_column: str | None = None

    def __post_init__(self) -> None:
        if self.task_type not in TASK_TYPES:
            raise InvalidInput(
                f"task type {self.task_type!r} is not one of {[t for t in TASK_TYPES if t]}"
            )
        if self.method not in METHODS:
            raise InvalidInput(f"unknown method {self.method!r}; use one of {list(METHODS)}")
        if self.basis and self.registry:
            raise InvalidInput("give either a local basis or a registry, not both")
        if self.hold_zero_from and self.method != "full":
            raise InvalidInput("holding weights at zero is the full-space experiment: method full")
        if self.record_every < 1:
            raise InvalidInput(f"record_every must be at least 1, got {self.record_every}")
        if self.hold_zero_mode not in CONTROL_MODES:
            raise InvalidInput(
                f"hold_zero_mode {self.hold_zero_mode!r} is not one of {list(CONTROL_MODES)}"
            )
        if self.eval_split not in ("dev", "tune"):
            raise InvalidInput(f"eval_split must be 'dev' or 'tune', got {self.eval_split!r}")
        if self.eval_split == "tune" and not self.tune_fraction:
            raise InvalidInput("eval_split 'tune' needs a tuning split: give tune_fraction > 0")


def open_source(spec: RunSpec) -> BasisSource | None:
    """The basis the spec names, or None (full, freeze, and generated bases)."""
    if spec.registry:
        if spec.method not in BASIS_KIND and spec.method != "random":
            return None
        kind = spec.basis_kind or BASIS_KIND.get(spec.method, "task")
        task_id = spec.basis_task or spec.task
        return RegistryBasisSource(
            spec.registry,
            task_id,
            kind,
            version=spec.basis_version,
            alias=spec.basis_alias,
            token=spec.token,
        )
    if spec.basis:
        source = StoreBasisSource.open(spec.basis, task=spec.basis_task)
        if spec.basis_kind and source.kind != spec.basis_kind:
            raise InvalidInput(f"{spec.basis} is a {source.kind!r} basis, not {spec.basis_kind!r}")
        return source
    if spec.method in BASIS_KIND:
        raise InvalidInput(
            f"method {spec.method!r} needs a basis: a local --basis PATH or --registry URL "
            "with --basis-task"
        )
    return None


def _recorder(spec: RunSpec, model, layout, model_name: str):
    from storage.trajectory import TrajectoryStore

    store = TrajectoryStore.create(spec.record_trajectory, layout, model_name=model_name)

    def state() -> dict:
        if isinstance(model, SubspaceModel):
            return model.effective_state_dict()
        return {k: v.detach() for k, v in model.state_dict().items()}

    store.append(flatten_state(state(), layout), step=0, epoch=0.0)

    def on_step(step: int, epoch: float, loss: float) -> None:
        if step % spec.record_every == 0:
            store.append(
                flatten_state(state(), layout), step=step, epoch=epoch, metrics={"loss": loss}
            )

    return store, on_step


def run(spec: RunSpec, progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Run one fine-tuning job and return its record (also written to spec.out/run.json)."""
    started = time.time()
    task, curve_examples = _load_run_task(spec)
    source = open_source(spec)
    loaded, layout, model = _prepare_model(spec, task, source)
    hold_zero, held_info = _hold_zero_masks(spec, layout)
    on_step, store = None, None
    if spec.record_trajectory:
        store, on_step = _recorder(spec, model, layout, loaded.name)
    result = train(
        model,
        loaded.tokenizer,
        task,
        spec.train,
        theta_lr=spec.subspace.theta_lr,
        hold_zero=hold_zero,
        on_step=on_step,
        progress=progress,
        head=_head_parameters(loaded.model, layout),
        curve_examples=curve_examples,
    )
    record = _build_record(spec, task, loaded, layout, result, held_info, store, started)
    _add_model_details(record, spec, task, model, loaded.tokenizer)
    if spec.registry:
        record["registry_run"] = post_run(spec, record, source)
    if spec.out:
        _write_outputs(spec, record, model, loaded, layout)
    return record


def _load_run_task(spec: RunSpec) -> tuple[Task, Examples | None]:
    """The spec's task and the held-out split of its learning curve.

    Learning curves are drawn on the tuning split where there is one, so dev stays unseen; with
    eval_split="tune" the run is also scored there (task.dev is the tuning split), so the
    reported dev split never sees this run.
    """
    task = load_task(
        spec.task,
        split_seed=spec.split_seed,
        dev_fraction=spec.dev_fraction,
        train_size=spec.train_size,
        dev_size=spec.dev_size,
        tune_fraction=spec.tune_fraction,
        tune_size=spec.tune_size,
        problem=TASK_TYPES[spec.task_type],
        text_column=spec.text_column,
        prompt_column=spec.prompt_column,
        response_column=spec.response_column,
    )
    curve_examples = task.tune
    if spec.eval_split == "tune":
        task = dataclasses.replace(task, dev=task.tune)
    return task, curve_examples


def _prepare_model(
    spec: RunSpec, task: Task, source: BasisSource | None
) -> tuple[LoadedModel, Layout, torch.nn.Module]:
    """Load the base model and re-parameterize it for spec.method: (loaded, layout, model)."""
    # The head is initialized from the global RNG: the same seed gives every method the same.
    seed_everything(spec.train.seed)
    texts = task.train.texts
    if task.train.responses:  # a tiny decoder's vocabulary covers the responses too
        texts = texts + task.train.responses
    loaded = load_model(spec.model, num_labels=task.num_labels, problem=task.problem, texts=texts)
    layout = layout_from_model(loaded.model, spec.subspace.rule)
    model = prepare(
        spec.method, loaded.model, spec.subspace, source=source, task=task.name, layout=layout
    )
    return loaded, layout, model


def _hold_zero_masks(
    spec: RunSpec, layout: Layout
) -> tuple[dict[str, torch.Tensor] | None, dict[str, Any] | None]:
    """The weights held at zero (spec.hold_zero_from's outliers, or a control of the same
    size) and what run.json says of them; (None, None) when nothing is held."""
    if not spec.hold_zero_from:
        return None, None
    arrays = outliers.load_arrays(spec.hold_zero_from)
    positions = {layer: a["indices"] for layer, a in arrays.items()}
    hold_zero = control_masks(layout, positions, mode=spec.hold_zero_mode, seed=spec.train.seed)
    held_info = {
        "from": spec.hold_zero_from,
        "mode": spec.hold_zero_mode,
        "count": int(sum(m.sum() for m in hold_zero.values())),
    }
    return hold_zero, held_info


def _head_parameters(base: torch.nn.Module, layout: Layout) -> list[torch.nn.Parameter]:
    """The base model's head (pooler, classifier): trained at its own head_lr."""
    parts = parameter_parts(base, layout)
    return [base.get_parameter(n) for n, part in parts.items() if part == "head"]


def _build_record(
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
        "data": {**task.describe(), "split_seed": spec.split_seed, "eval_split": spec.eval_split},
        "train": {**spec.train.to_dict(), **result.to_dict()},
        "hold_zero": held_info,
        "trajectory": store.url if store is not None else None,
        "started_at": started,
        "seconds": time.time() - started,
    }


def _add_model_details(
    record: dict[str, Any], spec: RunSpec, task: Task, model: torch.nn.Module, tokenizer: Any
) -> None:
    """Add what depends on the kind of run: a causal LM's sample continuations, a subspace
    run's rank, basis reference and theta summary (how far the run went)."""
    if task.problem == CAUSAL_LM:
        record["samples"] = _samples(model, tokenizer, task.dev)
    if isinstance(model, SubspaceModel):
        record["rank"] = next(iter(model.subspace_theta.values())).shape[1]
        record["basis"] = model.subspace_reference
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
    import httpx

    from client import Client
    from storage.errors import TinysubError

    client = getattr(source, "client", None) or Client(spec.registry, token=spec.token)
    ref = record.get("basis") or {}
    from_registry = bool(ref.get("registry"))
    fields: dict[str, Any] = {
        "task_id": ref.get("task") if from_registry else (spec.basis_task or spec.task),
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
    if from_registry:
        fields.update(
            basis_task_id=ref["task"], basis_kind=ref["kind"], basis_version=int(ref["version"])
        )
    try:
        return {"posted": True, **client.create_run(**fields)}
    except (TinysubError, httpx.HTTPError) as exc:
        log.warning("the registry did not take the run: %s", exc)
        return {"posted": False, "error": str(exc)}


def _write_outputs(spec: RunSpec, record: dict, model, loaded, layout) -> None:
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


def read_run(path: str) -> dict:
    file = os.path.join(path, RUN_FILE)
    if not os.path.exists(file):
        raise NotFound(f"no run at {path} (no {RUN_FILE})")
    with open(file) as f:
        record = json.load(f)
    if "dim" in record and "rank" not in record:  # written before `dim` was renamed `rank`
        record["rank"] = record.pop("dim")
    return record


def restore(
    path: str,
    *,
    basis: str | None = None,
    basis_dtype: str | None = None,
    device: str = "cpu",
):
    """Rebuild a finished subspace run from its folder: the base model, V from the basis the run
    references (checked by sha256; `basis` overrides the recorded local path), and the saved
    theta and full-space parts. Returns (SubspaceModel, tokenizer, record)."""
    from transformers import AutoTokenizer

    from worker.finetune.reparam import read_subspace_manifest
    from worker.finetune.sources import check_reference

    record = read_run(path)
    saved = read_subspace_manifest(os.path.join(path, "subspace"))
    # Runs saved before theta_scale existed were trained with the paper's plain V theta.
    config = SubspaceConfig.from_dict({"theta_scale": "none", **saved["config"]})
    if basis_dtype is not None:
        config = dataclasses.replace(config, basis_dtype=basis_dtype)
    ref = saved["basis"]
    data = record["data"]
    num_labels = 1 if data["problem"] == "regression" else len(data["labels"] or ())
    saved_tokenizer = os.path.join(path, "tokenizer")
    tokenizer = None
    if os.path.isdir(saved_tokenizer):
        tokenizer = AutoTokenizer.from_pretrained(saved_tokenizer, local_files_only=True)
    # The run drew any freshly initialized weights (a head, a tiny model) right after seeding.
    seed_everything(record["seed"])
    loaded = load_model(
        record["model"], num_labels=num_labels, problem=data["problem"], tokenizer=tokenizer
    )
    source = None
    if ref["kind"] in ("task", "unified", "zeroshot", "global"):
        url = basis or ref.get("url")
        if not url:
            raise InvalidInput(f"run {path} was trained in a registry basis; pass its local copy")
        source = StoreBasisSource.open(url, task=ref.get("task"))
        check_reference(source, ref)
        if ref.get("columns"):
            config = dataclasses.replace(config, rank=ref["columns"])
    elif config.rank is None:  # a generated basis whose k came from a basis given at train time
        first = next(iter(ref["layers"].values()))
        config = dataclasses.replace(config, rank=int(first["shape"][1]))
    model = prepare(saved["method"], loaded.model, config, source=source)
    if ref["kind"] in ("random", "fastfood"):
        check_reference_layers(model.subspace_reference, ref)
    model.load_subspace_state(os.path.join(path, "subspace"))
    return model.to(device), loaded.tokenizer, record


def check_reference_layers(have: dict, want: dict) -> None:
    bad = [
        n
        for n, w in want["layers"].items()
        if have["layers"].get(n, {}).get("sha256") != w["sha256"]
    ]
    if bad:
        raise InvalidInput(f"regenerated layers {bad} differ from the ones the run was trained in")
