"""`tinysub basis ...`: compute bases from local or fsspec trajectory stores."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from storage.errors import InvalidInput
from storage.vocabulary import BasisKind, BasisMode, BasisScope, parse, values
from tinysub.cli import remote
from tinysub.cli.common import console, job_progress, phase_progress, print_json, show_progress
from tinysub.cli.inspect import print_basis
from tinysub.cli.remote import DEFAULT_URL, TokenOption, UrlOption
from worker.executors import make_executor

# The kinds `compute` makes from stores (a random basis is the registry's: `order` makes it).
STORE_KINDS = (BasisKind.TASK, BasisKind.UNIFIED, BasisKind.ZEROSHOT, BasisKind.GLOBAL)
# Choices stay plain strings (checked by storage.vocabulary.parse): a bad one is one line.
STORE_KIND_HELP = " | ".join(values(STORE_KINDS))
KIND_HELP = " | ".join(values(BasisKind))
MODE_HELP = " | ".join(values(BasisMode))

app = typer.Typer(
    help="Compute bases from stores, or order, list and pull them from a registry.",
    no_args_is_help=True,
)


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
    kind: Annotated[str, typer.Option(help=STORE_KIND_HELP)] = BasisKind.TASK.value,
    mode: Annotated[str, typer.Option(help=MODE_HELP)] = BasisMode.DELTA.value,
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
    block_cols: Annotated[int, typer.Option(help="Columns per task.")] = 1 << 16,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda | numpy")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing basis.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Compute bases: the exact Gram route, or randomized SVD for long trajectories."""
    # Long by nature: the flags in the signature, mapped onto one call of the engine.
    from worker.svd.bases import multitask_bases, task_basis  # noqa: PLC0415 - kernels import torch: CLI start-up
    from worker.svd.method import RandomizedMethod, method_from_name  # noqa: PLC0415 - kernels import torch: CLI start-up

    chosen_kind = parse(BasisKind, kind, "kind", among=STORE_KINDS)
    # The flags name the method; the engine takes it typed, with its own parameters.
    chosen = method_from_name(method)
    if isinstance(chosen, RandomizedMethod):
        chosen = RandomizedMethod(oversample=oversample, power_iters=power_iters, seed=seed)
    stores = _parse_stores(store)
    with make_executor(executor, address, workers) as ex, phase_progress(not quiet) as cb:
        common = dict(
            mode=mode,
            executor=ex,
            block_cols=block_cols,
            device=device,
            progress=cb,
            overwrite=overwrite,
            method=chosen,
        )
        if chosen_kind in (BasisKind.TASK, BasisKind.GLOBAL):
            if len(stores) != 1:
                raise InvalidInput(f"a {kind} basis takes one --store, got {len(stores)}")
            report = task_basis(
                next(iter(stores.values())),
                out,
                rank,
                selection=select,
                scope=BasisScope.GLOBAL if chosen_kind == BasisKind.GLOBAL else BasisScope.LAYER,
                **common,
            )
        else:
            report = multitask_bases(
                stores,
                out,
                rank,
                selection=select or "last",
                unified=chosen_kind == BasisKind.UNIFIED,
                zeroshot=chosen_kind == BasisKind.ZEROSHOT,
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

    for b in report.bases:
        print_basis(b)
    console.print(
        f"rows used: {report.rows}; time: "
        + ", ".join(f"{k} {v:.2f}s" for k, v in report.seconds.items())
    )


# ------------------------------------------------------------------ the registry's bases
# `order`, `list`, `pull` and `alias` talk to a registry; `compute` above works on stores.


@app.command("order")
def order(
    task_id: Annotated[str, typer.Argument(help="The task the basis belongs to.")],
    kind: Annotated[str, typer.Option(help=KIND_HELP)] = BasisKind.TASK.value,
    rank: Annotated[int, typer.Option("--rank", "-k", help="Basis dimension per layer.")] = 8,
    mode: Annotated[str, typer.Option(help=MODE_HELP)] = BasisMode.DELTA.value,
    select: Annotated[
        str | None, typer.Option(help="all, last, last:K, first:K or every:K.")
    ] = None,
    tasks: Annotated[
        str | None, typer.Option(help="unified / zeroshot: comma-separated task IDs.")
    ] = None,
    seed: Annotated[int, typer.Option(help="random: the seed.")] = 0,
    executor: Annotated[str | None, typer.Option(help="local or the server's executor.")] = None,
    wait: Annotated[bool, typer.Option(help="Wait until the basis is ready.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Order a basis from the registry; prints the job (with --wait, its progress first)."""
    with remote.open_client(url, token) as c:
        job = c.compute_basis(
            task_id,
            kind,
            rank=rank,
            mode=mode,
            selection=select,
            tasks=[t.strip() for t in tasks.split(",") if t.strip()] if tasks else None,
            seed=seed,
            executor=executor,
        )
        if wait:
            with job_progress(show_progress(quiet or json_out)) as update:
                job.wait(on_update=update)
    if json_out:
        print_json(job.data)
    else:
        b = job.basis
        console.print(f"job {job.id}: {b['task_id']}/{b['kind']} v{b['version']} {job.status}")


@app.command("list")
def list_bases(
    task_id: str,
    kind: Annotated[str | None, typer.Option(help="Only this kind.")] = None,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Every version of a task's bases, with status and aliases."""
    with remote.open_client(url, token) as c:
        items = c.list_bases(task_id, kind)
    if json_out:
        print_json(items)
        return
    table = Table("kind", "version", "status", "aliases", "rank", "mode", "ready at")
    for b in items:
        table.add_row(
            b["kind"],
            str(b["version"]),
            b["status"],
            ",".join(b["aliases"]),
            str(b["params"].get("rank")),
            str(b["params"].get("mode")),
            str(b["ready_at"] or "-"),
        )
    console.print(table)


@app.command("pull")
def pull(
    task_id: str,
    kind: Annotated[str, typer.Option(help="Basis kind.")] = BasisKind.TASK.value,
    version: Annotated[int | None, typer.Option(help="A version (default: the alias).")] = None,
    alias: Annotated[str, typer.Option(help="An alias.")] = "latest",
    layer: Annotated[list[str] | None, typer.Option(help="Only these layers.")] = None,
    cache_dir: Annotated[str | None, typer.Option(help="Cache (TINYSUB_CACHE).")] = None,
    offline: Annotated[bool, typer.Option(help="Use the local cache only.")] = False,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Download a basis into the verified local cache (nothing moves if it is up to date)."""
    with remote.open_client(url, token, cache_dir=cache_dir) as c:
        pulled = c.pull_basis(
            task_id,
            kind,
            version=version,
            alias=alias,
            layers=layer or None,
            local_files_only=offline,
            progress=show_progress(quiet),
        )
    result = {
        "task_id": pulled.task_id,
        "kind": pulled.kind,
        "version": pulled.version,
        "files": {k: str(v) for k, v in pulled.files.items()},
    }
    if json_out:
        print_json(result)
        return
    console.print(f"{task_id}/{kind} v{pulled.version}: {len(pulled.files)} layers")
    for name, path in pulled.files.items():
        console.print(f"  {name} {pulled.shape(name)} {path}", highlight=False)


@app.command("alias")
def alias_cmd(
    task_id: str,
    kind: str,
    name: Annotated[str, typer.Argument(help="Alias name (not 'latest').")],
    version: Annotated[int | None, typer.Argument(help="Version to point at.")] = None,
    delete: Annotated[bool, typer.Option("--delete", help="Remove the alias.")] = False,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Point an alias at a ready version, or delete it."""
    with remote.open_client(url, token) as c:
        if delete:
            c.delete_alias(task_id, kind, name)
            console.print(f"{task_id}/{kind} alias {name} removed")
            return
        if version is None:
            raise InvalidInput("give the VERSION the alias should name, or --delete")
        row = c.set_alias(task_id, kind, name, version)
    console.print(f"{task_id}/{kind} {row['name']} -> v{row['version']}")
