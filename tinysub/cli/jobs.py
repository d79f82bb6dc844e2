"""`tinysub jobs ...`: list, show, wait for and cancel registry jobs."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from tinysub.cli import remote
from tinysub.cli.common import console, job_progress, print_json, show_progress
from tinysub.cli.remote import DEFAULT_URL, TokenOption, UrlOption

app = typer.Typer(help="Basis and recompute jobs on a registry.", no_args_is_help=True)


def print_jobs(jobs) -> None:
    table = Table("job", "basis", "status", "phase", "attempts", "error")
    for j in jobs:
        table.add_row(
            str(j.id),
            j.label,
            j.status,
            str(j.progress.get("phase", "")),
            str(j.attempts),
            (j.error or "")[:60],
        )
    console.print(table)


@app.command("list")
def list_cmd(
    status: Annotated[
        str | None, typer.Option(help="pending | running | succeeded | failed | cancelled")
    ] = None,
    task: Annotated[str | None, typer.Option(help="Only jobs of this task's bases.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 50,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    with remote.open_client(url, token) as c:
        jobs = c.jobs(status=status, task_id=task, limit=limit)
    print_json([j.data for j in jobs]) if json_out else print_jobs(jobs)


@app.command("show")
def show(job_id: int, url: UrlOption = DEFAULT_URL, token: TokenOption = None) -> None:
    with remote.open_client(url, token) as c:
        print_json(c.job(job_id).data)


@app.command("wait")
def wait(
    job_id: int,
    timeout: Annotated[float | None, typer.Option(help="Seconds.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Block until the job ends, showing its phase and progress; a failed job exits non-zero
    with its error."""
    with remote.open_client(url, token) as c, job_progress(show_progress(quiet)) as update:
        job = c.job(job_id).wait(timeout=timeout, on_update=update)
    console.print(f"job {job.id}: {job.status}")


@app.command("cancel")
def cancel(job_id: int, url: UrlOption = DEFAULT_URL, token: TokenOption = None) -> None:
    with remote.open_client(url, token) as c:
        job = c.cancel_job(job_id)
    console.print(
        f"job {job.id}: {job.status}{' (cancel requested)' if job.status == 'running' else ''}"
    )
