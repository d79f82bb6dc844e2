"""`tinysub finetune ...` (one fine-tuning run, any method) and `tinysub outliers ...` (Figure 4).

tinysub finetune --task rotten_tomatoes --method intrinsic --basis runs/rt-basis --out runs/rt
tinysub finetune --task rt --method intrinsic --basis-task rt --registry http://host:8000 ...
tinysub finetune --task jsonl:sft.jsonl --task-type causal-lm --model openai-community/gpt2 ...
tinysub outliers runs/rt-intrinsic runs/rt-random --out figure4.png
"""

from __future__ import annotations

import json
import os
from typing import Annotated

import typer
from rich.table import Table

from storage.errors import InvalidInput
from tinysub.cli.common import console, err_console, phase_progress, print_json


def register(app: typer.Typer) -> None:
    app.command("finetune")(finetune_cmd)
    app.command("outliers")(outliers_cmd)


def _parts(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def finetune_cmd(
    task: Annotated[
        str,
        typer.Option(
            "--task",
            "-t",
            help="rotten_tomatoes | imdb | trec6 | sms_spam | vader_movies | vader_tweets | "
            "vader_amazon | vader_nyt, or csv:PATH / jsonl:PATH / hf:PATH[@SPLIT] (a local "
            "Hugging Face dataset folder or data file; text:PATH for causal-lm).",
        ),
    ],
    out: Annotated[str, typer.Option("--out", "-o", help="Run folder (run.json, theta, ...).")],
    method: Annotated[
        str,
        typer.Option(
            help="full | freeze | intrinsic | transfer | unified | zeroshot | global | random "
            "| fastfood"
        ),
    ] = "intrinsic",
    model: Annotated[
        str,
        typer.Option(
            help="minilm, a local model folder, a Hugging Face Hub ID (from the HF cache; "
            "HF_HOME, HF_HUB_OFFLINE), tiny-bert/-roberta/-mpnet, or for causal-lm "
            "tiny-gpt2/-llama/-qwen2/-mistral."
        ),
    ] = "minilm",
    task_type: Annotated[
        str,
        typer.Option(
            help="auto (classification or regression from the labels) | classification | "
            "regression | causal-lm (next-token loss, scored by perplexity)."
        ),
    ] = "auto",
    text_column: Annotated[
        str | None,
        typer.Option(help="The column of texts (default: text, sentence; causal-lm: text)."),
    ] = None,
    label_column: Annotated[
        str | None, typer.Option(help="A labeled task's label column (default: label).")
    ] = None,
    prompt_column: Annotated[
        str | None,
        typer.Option(help="causal-lm: the prompt column (default: prompt, instruction, ...)."),
    ] = None,
    response_column: Annotated[
        str | None,
        typer.Option(help="causal-lm: the response column (default: response, output, ...)."),
    ] = None,
    basis: Annotated[
        str | None, typer.Option(help="A local basis (path or fsspec URL) to train in.")
    ] = None,
    basis_task: Annotated[
        str | None, typer.Option(help="Task ID whose basis is used (default: --task).")
    ] = None,
    basis_kind: Annotated[
        str | None, typer.Option(help="Basis kind to pull (default: from the method).")
    ] = None,
    basis_version: Annotated[int | None, typer.Option(help="Basis version to pull.")] = None,
    basis_alias: Annotated[str | None, typer.Option(help="Basis alias to pull.")] = None,
    registry: Annotated[
        str | None, typer.Option(help="Registry URL: pull the basis by task ID.")
    ] = None,
    token: Annotated[
        str | None, typer.Option(envvar="TINYSUB_TOKEN", help="Registry token.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Training seed (head init, dropout, order).")] = 0,
    split_seed: Annotated[int, typer.Option(help="Seed of the train/dev split.")] = 0,
    train_size: Annotated[int | None, typer.Option(help="Train examples to use.")] = None,
    dev_size: Annotated[int | None, typer.Option(help="Dev examples to use.")] = None,
    dev_fraction: Annotated[float, typer.Option(help="Share of the data held out.")] = 0.1,
    steps: Annotated[int | None, typer.Option(help="Optimizer steps (overrides epochs).")] = None,
    epochs: Annotated[int, typer.Option(help="Epochs when --steps is not given.")] = 1,
    batch_size: Annotated[int, typer.Option(help="Training batch size.")] = 16,
    max_length: Annotated[int, typer.Option(help="Tokens per example.")] = 64,
    lr: Annotated[float, typer.Option(help="Learning rate of full-space parameters.")] = 5e-5,
    theta_lr: Annotated[
        float,
        typer.Option(
            help="Learning rate of theta (0.2 for the default rule; the paper's rule, "
            "--theta-scale none, used 0.01)."
        ),
    ] = 0.2,
    theta_scale: Annotated[
        str,
        typer.Option(
            help="extent: theta in the trajectory's own units (V diag(extent) theta; default) | "
            "none: the paper's plain V theta."
        ),
    ] = "extent",
    head_lr: Annotated[
        float | None, typer.Option(help="Learning rate of the head (default: --lr).")
    ] = None,
    eval_every: Annotated[
        int | None, typer.Option(help="Evaluate every N steps (learning curve in run.json).")
    ] = None,
    tune_fraction: Annotated[
        float, typer.Option(help="Share held out as a tuning split beside dev (0: none).")
    ] = 0.0,
    eval_split: Annotated[
        str, typer.Option(help="dev | tune: the split the run is scored on.")
    ] = "dev",
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = 0.0,
    warmup_ratio: Annotated[float, typer.Option(help="Linear warmup share.")] = 0.0,
    rank: Annotated[
        int | None,
        typer.Option(
            "--rank", "-k", help="Subspace rank k (random/fastfood; truncates stored bases)."
        ),
    ] = None,
    dim: Annotated[
        int | None, typer.Option("--dim", hidden=True, help="Old name of --rank.")
    ] = None,
    ensemble: Annotated[int, typer.Option(help="h, theta vectors averaged per layer.")] = 16,
    init: Annotated[str, typer.Option(help="random (the paper) | zeros.")] = "random",
    init_std: Annotated[float, typer.Option(help="Std of the random theta init.")] = 0.01,
    basis_dtype: Annotated[str, typer.Option(help="float32 | float16 (V in memory).")] = "float32",
    scope: Annotated[
        str, typer.Option(help="layer | global (one theta for all layers).")
    ] = "layer",
    said: Annotated[bool, typer.Option(help="SAID per-layer scales (fastfood).")] = False,
    basis_seed: Annotated[int, typer.Option(help="Seed of random/fastfood bases.")] = 0,
    train_parts: Annotated[
        str, typer.Option(help="Full-space parts that train: embeddings,head,layernorm,...")
    ] = "embeddings,head",
    fastfood_block: Annotated[int | None, typer.Option(help="Fastfood block size.")] = None,
    record_trajectory: Annotated[
        str | None, typer.Option(help="Record checkpoints into a trajectory store here.")
    ] = None,
    record_every: Annotated[int, typer.Option(help="Steps between recorded checkpoints.")] = 10,
    hold_zero_from: Annotated[
        str | None,
        typer.Option(help="A subspace run folder: hold its outlier weights at zero (full)."),
    ] = None,
    hold_zero_mode: Annotated[
        str, typer.Option(help="outlier | random (as many random weights).")
    ] = "outlier",
    sigma: Annotated[float, typer.Option(help="Outlier threshold in std.")] = 3.0,
    save_model: Annotated[bool, typer.Option(help="Also save the merged model.")] = False,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda.")] = "auto",
    engine: Annotated[
        str, typer.Option(help="trainer (Hugging Face Trainer) | loop (tinysub's own loop).")
    ] = "trainer",
    grad_accum: Annotated[
        int, typer.Option(help="Batches per optimizer step (engine trainer).")
    ] = 1,
    precision: Annotated[
        str, typer.Option(help="fp32 | bf16 | fp16: autocast (engine trainer).")
    ] = "fp32",
    gradient_checkpointing: Annotated[
        bool, typer.Option(help="Recompute activations in backward (engine trainer).")
    ] = False,
    report_to: Annotated[
        str | None,
        typer.Option(help="Trainer loggers, comma-separated: tensorboard,mlflow,wandb."),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the run record as JSON.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Fine-tune a model on a task with one method and write the run to --out."""
    # Long by nature: a typer command declares every flag in its signature and maps them onto
    # one RunSpec; it reads top to bottom and the work happens in worker.finetune.runner.run.
    from worker.finetune.config import SubspaceConfig  # noqa: PLC0415 - imports torch: CLI start-up
    from worker.finetune.runner import RunSpec, run  # noqa: PLC0415 - imports torch: CLI start-up
    from worker.finetune.spec import basis_from_flags  # noqa: PLC0415 - imports torch: CLI start-up
    from worker.finetune.train import TrainConfig  # noqa: PLC0415 - imports torch: CLI start-up

    if registry and basis:
        raise InvalidInput("give --basis (local) or --registry, not both")
    rank = _rank_or_old_dim(rank, dim)
    # The flat flags stay; the spec takes them as one BasisRef and one RegistryConfig.
    basis_ref, registry_config = basis_from_flags(
        task,
        method,
        basis_task=basis_task,
        basis_kind=basis_kind,
        basis_version=basis_version,
        basis_alias=basis_alias,
        registry=registry,
        token=token,
    )
    spec = RunSpec(
        task=task,
        method=method,
        model=model,
        out=out,
        subspace=SubspaceConfig(
            ensemble=ensemble,
            theta_lr=theta_lr,
            theta_scale=theta_scale,
            init=init,
            init_std=init_std,
            train_parts=_parts(train_parts),
            basis_dtype=basis_dtype,
            scope=scope,
            rank=rank,
            said=said,
            basis_seed=basis_seed,
            fastfood_block=fastfood_block,
        ),
        train=TrainConfig(
            lr=lr,
            batch_size=batch_size,
            epochs=epochs,
            max_steps=steps,
            max_length=max_length,
            weight_decay=weight_decay,
            warmup_ratio=warmup_ratio,
            seed=seed,
            device=device,
            head_lr=head_lr,
            eval_every=eval_every,
            engine=engine,
            grad_accum=grad_accum,
            precision=precision,
            gradient_checkpointing=gradient_checkpointing,
            report_to=tuple(_parts(report_to)) if report_to else (),
        ),
        basis=basis,
        basis_ref=basis_ref,
        registry=registry_config,
        split_seed=split_seed,
        dev_fraction=dev_fraction,
        train_size=train_size,
        dev_size=dev_size,
        tune_fraction=tune_fraction,
        eval_split=eval_split,
        record_trajectory=record_trajectory,
        record_every=record_every,
        hold_zero_from=hold_zero_from,
        hold_zero_mode=hold_zero_mode,
        sigma=sigma,
        save_model=save_model,
        task_type=task_type,
        text_column=text_column,
        label_column=label_column,
        prompt_column=prompt_column,
        response_column=response_column,
    )
    with phase_progress(not quiet and not json_out) as cb:
        record = run(spec, progress=cb)
    if json_out:
        print_json(record)
        return
    tr = record["train"]
    dim_text = f", rank {record['rank']}" if record.get("rank") else ""
    console.print(
        f"{record['task']} / {record['method']}{dim_text}: {record['metric']} "
        f"[bold]{record['score']:.4f}[/bold] on {record['data']['dev_size']} dev examples "
        f"({tr['steps']} steps, {tr['seconds_per_step']:.3f} s/step, "
        f"{tr['trainable']['subspace']:,} subspace + {tr['trainable']['full_space']:,} "
        f"full-space trainable)"
    )
    for sample in record.get("samples") or []:
        console.print(f"  {sample['prompt']!r} -> {sample['output']!r}", markup=False)
    if record.get("outliers"):
        o = record["outliers"]
        console.print(
            f"outliers beyond {o['sigma']:g} sigma: {o['total_count']:,} "
            f"({100 * o['total_fraction']:.3f}%; a Gaussian gives "
            f"{100 * o['expected_gaussian_fraction']:.3f}%)"
        )
    console.print(f"run written to {os.path.join(out, 'run.json')}")


def outliers_cmd(
    runs: Annotated[
        list[str], typer.Argument(help="Subspace run folders, e.g. an intrinsic and a random one.")
    ],
    out: Annotated[str, typer.Option("--out", "-o", help="PNG file of the |V theta| profiles.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print the tables as JSON.")] = False,
) -> None:
    """Figure 4 and Table 4: |V theta| per layer of each run, outlier counts and positions."""
    from worker.finetune import outliers  # noqa: PLC0415 - imports torch: CLI start-up
    from worker.finetune.runner import read_run  # noqa: PLC0415 - imports torch: CLI start-up

    panels, tables = {}, {}
    for path in runs:
        rec = read_run(path)
        arrays = outliers.load_arrays(path)
        label = f"{rec['method']} ({rec['task']}, rank {rec['rank']}, seed {rec['seed']})"
        if label in panels:
            label = f"{label} [{path}]"
        panels[label] = {layer: a["profile"] for layer, a in arrays.items()}
        with open(os.path.join(path, outliers.OUTLIERS_JSON)) as f:
            tables[label] = json.load(f)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    outliers.plot_profiles(panels, out, title="|V theta| per encoder layer")
    if json_out:
        print_json({"figure": out, "runs": tables})
        return
    counts = Table("run", "layer", "outliers", "fraction", "Gaussian expects", "kurtosis")
    for label, rep in tables.items():
        for row in rep["layers"]:
            counts.add_row(
                label,
                row["layer"],
                f"{row['count']:,}",
                f"{100 * row['fraction']:.3f}%",
                f"{row['expected_gaussian']:,.0f}",
                f"{row['kurtosis']:.1f}",
            )
    console.print(counts)
    for label, rep in tables.items():
        pos = Table("component", "layers", "# of top-10 outliers each layer", title=label)
        for row in rep["table4"]:
            pos.add_row(
                row["component"], ", ".join(row["layers"]), ", ".join(map(str, row["counts"]))
            )
        console.print(pos)
    console.print(f"figure written to {out}")


def _rank_or_old_dim(rank: int | None, dim: int | None) -> int | None:
    """`--dim` is the old name of `--rank` (one release): it still works, with a note."""
    if dim is None:
        return rank
    if rank is not None and rank != dim:
        raise InvalidInput(f"--rank {rank} and its old name --dim {dim} disagree; give --rank")
    err_console.print("note: --dim is now --rank; --dim will be removed in the next release")
    return dim
