"""`tinysub recompute`: queue new versions of many bases at once."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from client.jobs import start_recompute
from tinysub.cli import remote
from tinysub.cli.common import console, job_progress, print_json, show_progress
from tinysub.cli.remote import DEFAULT_URL, TokenOption, UrlOption


def recompute_cmd(
    task: Annotated[list[str] | None, typer.Option(help="Task ID (repeatable).")] = None,
    model: Annotated[str | None, typer.Option(help="Only tasks of this model.")] = None,
    kind: Annotated[list[str] | None, typer.Option(help="Basis kind (repeatable).")] = None,
    stale_only: Annotated[
        bool, typer.Option(help="Only bases whose inputs changed since they were built.")
    ] = False,
    dry_run: Annotated[bool, typer.Option(help="Report, queue nothing.")] = False,
    wait: Annotated[
        bool, typer.Option(help="Also wait for the basis jobs the recompute queued.")
    ] = False,
    detach: Annotated[
        bool,
        typer.Option(
            help="Print the recompute job and return at once (`tinysub jobs show ID` gives its "
            "result once it ran)."
        ),
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """One job per selected basis (filters: tasks, model, kinds, stale only).

    The registry runs the selection as a recompute job (under --stale-only it digests every
    selected basis' inputs); this waits for that job, then prints what it queued and skipped.
    """
    # Long by nature: a typer command; its flags, then the steps they drive, top to bottom.
    if detach and wait:
        raise typer.BadParameter("--detach and --wait exclude each other")
    with remote.open_client(url, token) as c:
        job = start_recompute(
            c,
            task_ids=task or None,
            model=model,
            kinds=kind or None,
            stale_only=stale_only,
            dry_run=dry_run,
        )
        if detach:
            if json_out:
                print_json(job.data)
            else:
                console.print(f"recompute job {job.id}: {job.status}")
            return
        with job_progress(show_progress(quiet or json_out)) as update:
            result = job.wait(on_update=update).result or {"queued": [], "skipped": []}
            if wait:
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
    queued, skipped = len(result["queued"]), len(result["skipped"])
    console.print(f"recompute job {job.id}: {queued} queued, {skipped} skipped")
