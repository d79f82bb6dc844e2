"""`tinysub basis ...`: compute bases from local or fsspec trajectory stores."""

from __future__ import annotations

from typing import Annotated

import typer

from client.cli.common import console, phase_progress, print_json
from storage.errors import InvalidInput

app = typer.Typer(help="Compute and inspect layer-wise bases.", no_args_is_help=True)


def _parse_stores(stores: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for i, spec in enumerate(stores):
        label, sep, url = spec.partition("=")
        if not sep or "://" in label or "/" in label:
            label, url = f"task{i}", spec
        if label in out:
            raise InvalidInput(f"task label {label!r} is given twice")
        out[label] = url
    return out


@app.command("compute")
def compute(
    store: Annotated[
        list[str],
        typer.Option(
            "--store",
            "-s",
            help="Trajectory store (path or URL); for unified/zeroshot give several as LABEL=URL.",
        ),
    ],
    out: Annotated[
        str,
        typer.Option(
            "--out",
            "-o",
            help="Where the basis (or, for unified/zeroshot, the folder of bases) is written.",
        ),
    ],
    kind: Annotated[str, typer.Option(help="task | unified | zeroshot | global")] = "task",
    mode: Annotated[str, typer.Option(help="raw | delta | centered")] = "delta",
    rank: Annotated[int, typer.Option("--rank", "-k", help="Basis dimension per layer.")] = 8,
    select: Annotated[
        str | None,
        typer.Option(
            help="Checkpoint rows: all, last, last:K, first:K, every:K (default: all for task and "
            "global, last for unified and zeroshot)."
        ),
    ] = None,
    method: Annotated[str, typer.Option(help="gram (exact) | randomized")] = "gram",
    oversample: Annotated[int, typer.Option(help="Randomized: extra sketch columns p.")] = 10,
    power_iters: Annotated[int, typer.Option(help="Randomized: power iterations q.")] = 2,
    seed: Annotated[int, typer.Option(help="Randomized: sketch seed.")] = 0,
    executor: Annotated[str, typer.Option(help="local | dask | ray")] = "local",
    address: Annotated[str | None, typer.Option(help="Dask scheduler or Ray address.")] = None,
    workers: Annotated[int | None, typer.Option(help="Workers for a local pool/cluster.")] = None,
    block_cols: Annotated[int, typer.Option(help="Columns per task.")] = 1 << 18,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda | numpy")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing basis.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Compute bases: the exact Gram route, or randomized SVD for long trajectories."""
    from worker.executors import make_executor
    from worker.svd.bases import KINDS, multitask_bases, task_basis

    if kind not in KINDS:
        raise InvalidInput(f"kind {kind!r} is not one of {list(KINDS)}")
    if method not in ("gram", "randomized"):
        raise InvalidInput(f"method {method!r} is not one of ['gram', 'randomized']")
    stores = _parse_stores(store)
    with make_executor(executor, address, workers) as ex, phase_progress(not quiet) as cb:
        common = dict(
            mode=mode,
            executor=ex,
            block_cols=block_cols,
            device=device,
            progress=cb,
            overwrite=overwrite,
        )
        if method == "randomized":
            common.update(
                method="randomized", oversample=oversample, power_iters=power_iters, seed=seed
            )
        if kind in ("task", "global"):
            if len(stores) != 1:
                raise InvalidInput(f"a {kind} basis takes one --store, got {len(stores)}")
            report = task_basis(
                next(iter(stores.values())),
                out,
                rank,
                selection=select,
                scope="global" if kind == "global" else "layer",
                **common,
            )
        else:
            report = multitask_bases(
                stores,
                out,
                rank,
                selection=select or "last",
                unified=kind == "unified",
                zeroshot=kind == "zeroshot",
                **common,
            )
    result = {
        "seconds": report.seconds,
        "rows": report.rows,
        "bases": [b.summary() for b in report.bases],
    }
    if json_out:
        print_json(result)
        return
    from client.cli.inspect import print_basis

    for b in report.bases:
        print_basis(b)
    console.print(
        f"rows used: {report.rows}; time: "
        + ", ".join(f"{k} {v:.2f}s" for k, v in report.seconds.items())
    )
