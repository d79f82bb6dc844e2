"""Shared pieces of the command line: the console, progress bars, error reporting."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

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


def print_json(obj: Any) -> None:
    console.print_json(json.dumps(obj, default=str))
