"""`tinysub`: the command line. Each command group lives in its own module."""

from __future__ import annotations

import sys

import click
import typer

from storage.errors import TinysubError
from tinysub.cli import (
    basis,
    db,
    demo,
    experiment,
    export,
    finetune,
    ingest,
    inspect,
    jobs,
    recompute,
    serve,
    task,
    token,
)
from tinysub.cli.common import err_console

app = typer.Typer(
    name="tinysub",
    help="Intrinsic task subspaces: trajectories, bases, registry and subspace fine-tuning.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(basis.app, name="basis")
app.add_typer(task.app, name="task")
app.add_typer(jobs.app, name="jobs")
app.add_typer(token.app, name="token")
app.add_typer(db.app, name="db")
app.add_typer(experiment.app, name="experiment")
app.command("inspect")(inspect.inspect_cmd)
app.command("ingest")(ingest.ingest_cmd)
app.command("demo")(demo.demo_cmd)
app.command("serve")(serve.serve_cmd)
app.command("recompute")(recompute.recompute_cmd)
app.command("export")(export.export_cmd)
finetune.register(app)


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code. Expected errors become one line on stderr."""
    command = typer.main.get_command(app)
    try:
        result = command.main(args=argv, prog_name="tinysub", standalone_mode=False)
    except TinysubError as exc:
        # Retries that ran out on the network (client.retry.RetriesExhausted) are both.
        where = "cannot reach the registry: " if _is_transport_error(exc) else ""
        err_console.print(f"[red]error:[/red] {where}{exc}", highlight=False, soft_wrap=True)
        return 2
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Abort:
        err_console.print("aborted")
        return 130
    except (FileNotFoundError, PermissionError, TimeoutError) as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        return 2
    except Exception as exc:
        if not _is_transport_error(exc):
            raise
        err_console.print(
            f"[red]error:[/red] cannot reach the registry: {exc}", highlight=False, soft_wrap=True
        )
        return 2
    # Without standalone mode, typer hands back the code of a `typer.Exit(code)` as the result.
    return result if isinstance(result, int) else 0


def _is_transport_error(exc: Exception) -> bool:
    httpx = sys.modules.get("httpx")  # only commands that talk to a registry import it
    return httpx is not None and isinstance(exc, httpx.TransportError)


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
