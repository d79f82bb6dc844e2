"""Alembic's environment for the registry's tables, run by `services.migrations` (never by an
alembic.ini): the caller opens the connection, takes the upgrade lock and passes the connection
in `config.attributes["connection"]`, so the whole upgrade is one transaction on it."""

from __future__ import annotations

from alembic import context

from services.models import Base, UTCDateTime


def _render_item(kind, obj, _autogen_context):
    # Revisions store plain DateTime: UTCDateTime only converts values in Python.
    if kind == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime()"
    return False


connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "tinysub's migrations run on a connection from services.migrations "
        "(`tinysub db upgrade`); there is no offline or alembic.ini mode"
    )
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    # SQLite cannot ALTER most things: batch mode copies the table instead.
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
    render_item=_render_item,
)
with context.begin_transaction():
    context.run_migrations()
