"""`tinysub demo`: the main job end to end on the embedded default (no server needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from client.cli.common import console, phase_progress


def demo_cmd(
    workdir: Annotated[Path, typer.Option(help="Where the demo writes its stores.")] = Path(
        ".tinysub/demo"
    ),
    epochs: Annotated[int, typer.Option(help="Fine-tuning epochs = trajectory rows.")] = 16,
    rank: Annotated[int, typer.Option(help="Basis dimension per layer.")] = 8,
    executor: Annotated[str, typer.Option(help="local | dask | ray")] = "local",
) -> None:
    """Fine-tune a tiny model capturing its trajectory, compute its bases, print a summary."""
    from client.demo import DemoConfig, run_demo

    cfg = DemoConfig(workdir=workdir, epochs=epochs, rank=rank, executor=executor)
    console.rule("tinysub demo: fine-tune -> trajectory store -> bases")
    with phase_progress() as cb:
        out = run_demo(cfg, progress=cb)
    traj = out["trajectory"]
    console.print(
        f"trajectory: {traj['url']} ({traj['rows']} rows = theta0 + {traj['rows'] - 1} "
        f"epochs, {len(traj['groups'])} layers, layout {traj['layout_hash'][:12]})"
    )
    console.print(f"fine-tuned dev accuracy: {out['eval'].get('eval_accuracy', float('nan')):.3f}")
    for kind, info in out["bases"].items():
        s = info["summary"]
        table = Table(title=f"{kind} basis ({s['mode']}, {s['scope']}) at {s['url']}")
        table.add_column("layer")
        table.add_column("D x k")
        table.add_column("energy captured")
        table.add_column("spectrum (sigma_1 .. sigma_k)")
        for layer in s["layers"]:
            sv = layer["singular_values"]
            table.add_row(
                layer["name"],
                f"{layer['shape'][0]:,} x {layer['shape'][1]}",
                f"{layer['energy_captured']:.4f}",
                " ".join(f"{x:.3g}" for x in sv[:6]) + (" ..." if len(sv) > 6 else ""),
            )
        console.print(table)
        console.print("time: " + ", ".join(f"{k} {v:.2f}s" for k, v in info["seconds"].items()))
