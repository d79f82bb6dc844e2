"""`tinysub task ...`: create, list, show tasks; register or upload their trajectories."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from storage.errors import InvalidInput
from storage.trajectory import TrajectoryStore
from tinysub.cli import remote
from tinysub.cli.common import console, print_json, show_progress
from tinysub.cli.remote import DEFAULT_URL, TokenOption, UrlOption

app = typer.Typer(help="Tasks and their trajectories on a registry.", no_args_is_help=True)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


@app.command("create")
def create(
    task_id: Annotated[str, typer.Argument(help="A slug: a-z, 0-9, '-', '_'.")],
    model: Annotated[str, typer.Option(help="Model name, e.g. bert-base-uncased.")],
    store: Annotated[
        str | None, typer.Option(help="Take the layout from this trajectory store.")
    ] = None,
    layout: Annotated[Path | None, typer.Option(help="A layout JSON document.")] = None,
    revision: Annotated[str | None, typer.Option(help="Model revision.")] = None,
    description: Annotated[str, typer.Option(help="Free text.")] = "",
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    json_out: JsonOpt = False,
) -> None:
    """Create a task with the layout of a store (--store) or a layout file (--layout)."""
    if (store is None) == (layout is None):
        raise InvalidInput("give exactly one of --store and --layout")
    if store is not None:
        opened = TrajectoryStore.open(store)
        doc, revision = opened.layout.to_dict(), revision or opened.revision
    else:
        doc = json.loads(layout.read_text())
    with remote.open_client(url, token) as c:
        task = c.create_task(
            task_id, model=model, layout=doc, revision=revision, description=description
        )
    print_json(task) if json_out else console.print(
        f"task {task['id']} ({task['layout_hash'][:12]})"
    )


@app.command("list")
def list_cmd(
    model: Annotated[str | None, typer.Option(help="Only tasks of this model.")] = None,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    json_out: JsonOpt = False,
) -> None:
    with remote.open_client(url, token) as c:
        tasks = list(c.iter_tasks(model=model))
    if json_out:
        print_json(tasks)
        return
    table = Table("task", "model", "revision", "layout", "groups", "rows")
    for t in tasks:
        table.add_row(
            t["id"],
            t["model"],
            t["revision"] or "-",
            t["layout_hash"][:12],
            str(len(t["groups"])),
            "-" if t["rows"] is None else str(t["rows"]),
        )
    console.print(table)


@app.command("show")
def show(task_id: str, url: UrlOption = DEFAULT_URL, token: TokenOption = None) -> None:
    with remote.open_client(url, token) as c:
        task = c.get_task(task_id)
        try:
            traj = c.trajectory_page(task_id, limit=1)  # the counts, not every row's sha256
            task["trajectory"] = {k: traj[k] for k in ("url", "source", "dtype", "rows")}
        except KeyError:
            task["trajectory"] = None
    print_json(task)


@app.command("register")
def register(
    task_id: str,
    store_url: Annotated[str, typer.Argument(help="An existing store the server can read.")],
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Register an existing trajectory store (checked against the task's layout)."""
    with remote.open_client(url, token) as c:
        traj = c.register_trajectory(task_id, store_url)
    console.print(f"{task_id}: {traj['rows']} rows at {traj['url']}")


@app.command("upload")
def upload(
    task_id: str,
    source: Annotated[str, typer.Argument(help="A local trajectory store or checkpoint folder.")],
    base: Annotated[
        str | None, typer.Option(help="theta0 (a weights file or folder) for a checkpoint folder.")
    ] = None,
    part_mb: Annotated[int, typer.Option(help="MiB per request.")] = 8,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Upload rows over HTTP; run it again after an interruption to resume."""
    with remote.open_client(url, token) as c:
        traj = c.upload_trajectory(
            task_id, source, base=base, part_bytes=part_mb << 20, progress=show_progress(quiet)
        )
    console.print(f"{task_id}: {traj['rows']} rows committed")
