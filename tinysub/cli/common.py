"""Shared pieces of the command line: the console, progress bars, error reporting."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from storage.vocabulary import JobStatus

console = Console()
err_console = Console(stderr=True)


@contextlib.contextmanager
def phase_progress(enabled: bool = True) -> Iterator[Any]:
    """A progress callback `cb(phase, done, total)` backed by one rich bar per phase."""
    if not enabled:
        yield None
        return
    with Progress(
        TextColumn("{task.description:>10}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=False,
    ) as bar:
        tasks: dict[str, int] = {}

        def cb(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(phase, total=total)
            bar.update(tasks[phase], completed=done)

        yield cb


def show_progress(quiet: bool) -> bool:
    """Progress bars go to stderr, and only where a person watches it."""
    return not quiet and err_console.is_terminal


@contextlib.contextmanager
def job_progress(enabled: bool) -> Iterator[Any]:
    """`on_update(job)` for `Job.wait`: one bar per job with the server-reported phase and
    fraction (the server records each job's progress as the kernels report it)."""
    if not enabled:
        yield None
        return
    with Progress(
        TextColumn("{task.description}"),
        TextColumn("{task.fields[phase]:>10}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=err_console,
    ) as bar:
        tasks: dict[int, Any] = {}

        def on_update(job: Any) -> None:
            if job.id not in tasks:
                tasks[job.id] = bar.add_task(f"job {job.id} {job.label}", total=1.0, phase="")
            phase = job.status if job.done else job.progress.get("phase", job.status)
            done = 1.0 if job.status == JobStatus.SUCCEEDED else job.fraction
            bar.update(tasks[job.id], completed=done or 0.0, phase=phase)

        yield on_update


def print_json(obj: Any) -> None:
    console.print_json(json.dumps(obj, default=str))
