"""`tinysub demo`: the main job end to end on the embedded default (no server needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tinysub.cli.common import console, phase_progress


def demo_cmd(
    workdir: Annotated[Path, typer.Option(help="Where the demo writes its stores.")] = Path(
        ".tinysub/demo"
    ),
    epochs: Annotated[int, typer.Option(help="Fine-tuning epochs = trajectory rows.")] = 16,
    rank: Annotated[int, typer.Option(help="Basis dimension per layer.")] = 8,
    executor: Annotated[str, typer.Option(help="local | dask | ray")] = "local",
    finetune: Annotated[bool, typer.Option(help="Stage 2: full vs intrinsic vs random.")] = True,
    finetune_steps: Annotated[int, typer.Option(help="Training steps of each stage-2 run.")] = 100,
) -> None:
    """Fine-tune a tiny model capturing its trajectory, compute its bases, print a summary."""
    # Long by nature: a typer command; its flags, then the steps they drive, top to bottom.
    import transformers  # noqa: PLC0415 - optional, slow: CLI start-up

    from tinysub.demo import DemoConfig, run_demo  # noqa: PLC0415 - torch, transformers: CLI start-up

    # The demo prints its own summary; model-loading reports (a fresh classifier head is
    # expected here) would only bury it.
    transformers.logging.set_verbosity_error()

    cfg = DemoConfig(
        workdir=workdir,
        epochs=epochs,
        rank=rank,
        executor=executor,
        finetune=finetune,
        finetune_steps=finetune_steps,
    )
    console.rule("tinysub demo: fine-tune -> trajectory store -> bases")
    with phase_progress() as cb:
        out = run_demo(cfg, progress=cb)
    traj = out["trajectory"]
    console.print(
        f"trajectory: {traj['url']} ({traj['rows']} rows = theta0 + {traj['rows'] - 1} "
        f"epochs, {len(traj['groups'])} layers, layout {traj['layout_hash'][:12]})"
    )
    console.print(f"fine-tuned dev accuracy: {out['eval'].get('eval_accuracy', float('nan')):.3f}")
    console.print(f"registry: {out['registry']} (stopped); bases pulled into the verified cache:")
    for kind, info in out["bases"].items():
        m = info["manifest"]
        params = m.get("params", {})
        table = Table(title=f"{kind} basis v{m['version']} (mode {params.get('mode', '-')})")
        table.add_column("layer")
        table.add_column("D x k")
        table.add_column("energy captured")
        table.add_column("spectrum (sigma_1 .. sigma_k)")
        table.add_column("sha256")
        for layer in m["layers"]:
            sv = layer.get("singular_values") or []
            energy = layer.get("energy") or []
            table.add_row(
                layer["name"],
                f"{layer['shape'][0]:,} x {layer['shape'][1]}",
                f"{sum(energy):.4f}" if energy else "-",
                " ".join(f"{x:.3g}" for x in sv[:4]) + (" ..." if len(sv) > 4 else ""),
                layer["sha256"][:12],
            )
        console.print(table)
        first = next(iter(info["files"].values()))
        console.print(f"cached at {Path(first).parent}")
    if "finetune" in out:
        ft = out["finetune"]
        table = Table(
            title=f"subspace fine-tuning: {ft['model']} on {ft['task']} "
            f"(basis from {ft['rows']} trajectory rows, dim {ft['rank']} per layer)"
        )
        for col in ("method", "trainable", "dev score", "seconds", "posted to registry"):
            table.add_column(col)
        for method, r in ft["runs"].items():
            trainable = r.get("trainable") or {}
            # theta vectors, then embeddings + head (which every method trains, as in the paper)
            sub, other = trainable.get("subspace", 0), trainable.get("full_space", 0)
            table.add_row(
                method,
                f"{sub:,} theta + {other:,}" if sub else f"{other:,}",
                f"{r['metric']} {r['score']:.4f}",
                f"{r['seconds']:.0f}",
                str(r.get("posted") if r.get("posted") is not None else "-"),
            )
        console.print(table)
