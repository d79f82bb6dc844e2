"""`tinysub token ...`: tokens, straight on the registry database (no server needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tinysub.cli.common import console, err_console, print_json
from tinysub.cli.db import DataDir, DbUrl, open_database

app = typer.Typer(
    help="Create, list and revoke API tokens (on the database).", no_args_is_help=True
)


def _database(data_dir: Path | None, database_url: str | None):
    # The server's rule: upgrade the schema first unless TINYSUB_MIGRATE_ON_START=false.
    settings, db = open_database(data_dir, database_url)
    try:
        db.migrate(allow_upgrade=settings.migrate_on_start)
    except BaseException:
        db.dispose()
        raise
    return db


@app.command("create")
def create(
    name: Annotated[str, typer.Option(help="Who or what the token is for.")],
    scope: Annotated[
        list[str], typer.Option(help="read | write | admin (repeatable; admin > write > read).")
    ],
    data_dir: DataDir = None,
    database_url: DbUrl = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Create a token and print it once (only its sha256 is stored)."""
    from services.security import check_scopes, create_token  # noqa: PLC0415 - server extra; optional

    check_scopes(scope)  # bad input touches no database (none is created for it)
    db = _database(data_dir, database_url)
    with db.session() as s:
        row, plain = create_token(s, name, scope)
        info = {"id": row.id, "name": row.name, "scopes": row.scopes, "token": plain}
    db.dispose()
    if json_out:
        print_json(info)
    else:
        err_console.print(f"token {info['id']} ({name}, scopes {info['scopes']}); shown once:")
        console.print(plain, highlight=False, soft_wrap=True)


@app.command("list")
def list_cmd(data_dir: DataDir = None, database_url: DbUrl = None) -> None:
    from sqlalchemy import select  # noqa: PLC0415 - server extra; optional

    from services.models import Token  # noqa: PLC0415 - server extra; optional

    db = _database(data_dir, database_url)
    table = Table("id", "name", "scopes", "created", "revoked")
    with db.session() as s:
        for t in s.scalars(select(Token).order_by(Token.id)):
            table.add_row(
                str(t.id),
                t.name,
                ",".join(t.scopes),
                f"{t.created_at:%Y-%m-%d %H:%M}",
                f"{t.revoked_at:%Y-%m-%d %H:%M}" if t.revoked_at else "",
            )
    db.dispose()
    console.print(table)


@app.command("revoke")
def revoke(
    token_id: Annotated[int, typer.Argument(help="Token id (from `token list`).")],
    data_dir: DataDir = None,
    database_url: DbUrl = None,
) -> None:
    """Revoke a token; it stops working on the next request."""
    from services.security import revoke_token  # noqa: PLC0415 - server extra; optional

    db = _database(data_dir, database_url)
    with db.session() as s:
        revoke_token(s, token_id)
    db.dispose()
    console.print(f"token {token_id} revoked")
