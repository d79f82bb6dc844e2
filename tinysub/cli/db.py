"""`tinysub db ...`: the registry database's schema (migrations), straight on the database.

The same settings as `tinysub serve` choose the database: --database-url or TINYSUB_DATABASE_URL,
else the SQLite file under --data-dir / TINYSUB_DATA_DIR.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from tinysub.cli.common import console, err_console, print_json

if TYPE_CHECKING:
    from services.db import Database
    from services.settings import Settings

app = typer.Typer(
    help="The registry database's schema: upgrade it, show its revision.", no_args_is_help=True
)

DataDir = Annotated[Path | None, typer.Option(help="Registry data dir (TINYSUB_DATA_DIR).")]
DbUrl = Annotated[str | None, typer.Option(help="Database URL (TINYSUB_DATABASE_URL).")]
JsonOut = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def open_database(data_dir: Path | None, database_url: str | None) -> tuple[Settings, Database]:
    """The registry's settings with these overrides, and its database (schema not touched)."""
    from services.db import Database  # noqa: PLC0415 - server extra; optional
    from services.settings import Settings  # noqa: PLC0415 - server extra; optional

    overrides = {"data_dir": data_dir, "database_url": database_url}
    settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    if settings.database_url is None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    return settings, Database(settings.resolved_database_url)


def _where(db: Database) -> str:
    return db.engine.url.render_as_string(hide_password=True)


@app.command("upgrade")
def upgrade_cmd(
    data_dir: DataDir = None, database_url: DbUrl = None, json_out: JsonOut = False
) -> None:
    """Bring the schema to the newest revision (safe to repeat, and to run in parallel)."""
    # An empty database gets the schema from the revisions, a 0.1.0 one is stamped at the
    # baseline first; concurrent upgrades take turns (services.migrations).
    from services import migrations  # noqa: PLC0415 - server extra; optional

    _, db = open_database(data_dir, database_url)
    try:
        before, after = migrations.upgrade(db.engine)
    finally:
        db.dispose()
    info = {
        "database": _where(db),
        "before": before.revision,
        "before_kind": before.kind,
        "revision": after.revision,
        "head": after.head,
    }
    if json_out:
        print_json(info)
    elif before.kind == "current":
        console.print(f"already at revision {after.revision}, the newest", highlight=False)
    else:
        was = {"empty": "empty", "legacy": "tinysub 0.1.0, unstamped"}.get(
            before.kind, f"revision {before.revision}"
        )
        console.print(
            f"upgraded {info['database']}: {was} -> revision {after.revision}",
            highlight=False,
            soft_wrap=True,
        )


@app.command("current")
def current_cmd(
    data_dir: DataDir = None, database_url: DbUrl = None, json_out: JsonOut = False
) -> None:
    """Show the schema's revision; exit code 1: `tinysub db upgrade` is due, 2: unusable."""
    from services import migrations  # noqa: PLC0415 - server extra; optional

    _, db = open_database(data_dir, database_url)
    try:
        state = migrations.current(db.engine)
    finally:
        db.dispose()
    if json_out:
        print_json(
            {
                "database": _where(db),
                "revision": state.revision,
                "head": state.head,
                "kind": state.kind,
                "description": state.describe(),
            }
        )
    else:
        console.print(f"{state.revision or 'none'} (head {state.head})", highlight=False)
        err_console.print(state.describe(), highlight=False, soft_wrap=True)
    code = {"current": 0, "empty": 1, "legacy": 1, "behind": 1}.get(state.kind, 2)
    if code:
        raise typer.Exit(code)
