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

The pieces: worker.finetune.spec (RunSpec, the basis it names), worker.finetune.record (run.json,
the report to the registry, read_run) and worker.finetune.restore (rebuild a finished run); their
public names are importable from here too.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from storage.arrays import flatten_state
from storage.layout import layout_from_model
from storage.trajectory import TrajectoryStore
from worker.finetune import outliers
from worker.finetune.data import Examples, Task, load_task
from worker.finetune.methods import prepare
from worker.finetune.models import LoadedModel, load_model
from worker.finetune.outlier_controls import control_masks
from worker.finetune.record import (
    RUN_FILE,
    RUN_FORMAT,
    SAMPLES,
    add_model_details,
    build_record,
    post_run,
    read_run,
    write_outputs,
)
from worker.finetune.reparam import SubspaceModel, parameter_parts
from worker.finetune.restore import check_reference_layers, restore
from worker.finetune.sources import BasisSource
from worker.finetune.spec import TASK_TYPES, RunSpec, open_source
from worker.finetune.train import seed_everything, train

if TYPE_CHECKING:
    from storage.layout import Layout

# What callers imported from here before the split (runner was one module).
__all__ = [
    "RUN_FILE",
    "RUN_FORMAT",
    "SAMPLES",
    "TASK_TYPES",
    "RunSpec",
    "check_reference_layers",
    "open_source",
    "post_run",
    "read_run",
    "restore",
    "run",
]


def _recorder(
    spec: RunSpec, model: torch.nn.Module, layout: Layout, model_name: str
) -> tuple[TrajectoryStore, Callable[[int, float, float], None]]:
    """A trajectory store for spec.record_trajectory and the callback that fills it."""
    store = TrajectoryStore.create(spec.record_trajectory, layout, model_name=model_name)

    def state() -> dict[str, torch.Tensor]:
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
    record = build_record(spec, task, loaded, layout, result, held_info, store, started)
    add_model_details(record, spec, task, model, loaded.tokenizer)
    if spec.registry is not None:
        record["registry_run"] = post_run(spec, record, source)
    if spec.out:
        write_outputs(spec, record, model, loaded, layout)
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
        label_column=spec.label_column,
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
