"""`tinysub inspect PATH`: groups, rows, sizes of a trajectory store; spectrum of a basis."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from storage.basis import BasisStore
from storage.errors import NotFound
from storage.trajectory import TrajectoryStore
from tinysub.cli.common import console, print_json


def _mb(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def print_store(store: TrajectoryStore) -> None:
    console.print(f"[bold]trajectory[/bold] {store.url}")
    console.print(
        f"model {store.model_name or '-'} (revision {store.revision or '-'}), "
        f"rule {store.layout.rule}, layout {store.layout.hash[:12]}, "
        f"dtype {store.dtype}, {store.num_rows} committed rows, {_mb(store.nbytes())}"
    )
    table = Table("group", "parameters", "D", "bytes")
    for g in store.layout.groups:
        table.add_row(g.name, str(len(g.params)), f"{g.size:,}", _mb(4 * g.size * store.num_rows))
    console.print(table)
    if store.rows:
        rows = Table("row", "step", "epoch", "metrics")
        for r in store.rows:
            rows.add_row(
                str(r.index),
                str(r.step),
                str(r.epoch),
                ", ".join(f"{k}={v:.4g}" for k, v in r.metrics.items()),
            )
        console.print(rows)


def print_basis(basis: BasisStore) -> None:
    m = basis.manifest
    console.print(
        f"[bold]basis[/bold] {basis.url}: kind {m.get('kind')}, mode {m.get('mode')}, "
        f"scope {m.get('scope')}"
    )
    table = Table("layer", "D x k", "energy captured", "sigma_1", "sigma_k", "sha256")
    for info in basis.layers.values():
        sv = info.singular_values
        table.add_row(
            info.name,
            f"{info.rows:,} x {info.rank}",
            f"{sum(info.energy):.4f}",
            f"{sv[0]:.4g}",
            f"{sv[-1]:.4g}",
            info.sha256[:12],
        )
    console.print(table)


def inspect_cmd(
    path: Annotated[str, typer.Argument(help="A trajectory store or basis (path or URL).")],
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show what a store or basis holds."""
    if TrajectoryStore.exists(path):
        store = TrajectoryStore.open(path)
        if json_out:
            print_json({**store.summary(), "row_info": [r.to_dict() for r in store.rows]})
        else:
            print_store(store)
    elif BasisStore.exists(path):
        basis = BasisStore.open(path)
        if json_out:
            print_json(basis.summary())
        else:
            print_basis(basis)
    else:
        raise NotFound(f"{path} is neither a trajectory store nor a finished basis")
