"""`tinysub recompute`: queue new versions of many bases at once."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from client.cli import remote
from client.cli.common import console, job_progress, print_json, show_progress
from client.cli.remote import DEFAULT_URL, TokenOption, UrlOption


def recompute_cmd(
    task: Annotated[list[str] | None, typer.Option(help="Task ID (repeatable).")] = None,
    model: Annotated[str | None, typer.Option(help="Only tasks of this model.")] = None,
    kind: Annotated[list[str] | None, typer.Option(help="Basis kind (repeatable).")] = None,
    stale_only: Annotated[
        bool, typer.Option(help="Only bases whose inputs changed since they were built.")
    ] = False,
    dry_run: Annotated[bool, typer.Option(help="Report, queue nothing.")] = False,
    wait: Annotated[bool, typer.Option(help="Wait for the queued jobs.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """One job per selected basis (filters: tasks, model, kinds, stale only)."""
    with remote.open_client(url, token) as c:
        result = c.recompute(
            task_ids=task or None,
            model=model,
            kinds=kind or None,
            stale_only=stale_only,
            dry_run=dry_run,
        )
        if wait:
            with job_progress(show_progress(quiet or json_out)) as update:
                for item in result["queued"]:
                    if item["job_id"] is not None:
                        c.job(item["job_id"]).wait(on_update=update)
    if json_out:
        print_json(result)
        return
    table = Table("basis", "new version", "job", "status / reason")
    for item in result["queued"]:
        table.add_row(
            f"{item['task_id']}/{item['kind']}",
            f"v{item['version']}",
            str(item["job_id"] or "-"),
            f"queued: {item['reason']}",
        )
    for item in result["skipped"]:
        table.add_row(f"{item['task_id']}/{item['kind']}", "-", "-", f"skipped: {item['reason']}")
    console.print(table)
    console.print(f"{len(result['queued'])} queued, {len(result['skipped'])} skipped")
