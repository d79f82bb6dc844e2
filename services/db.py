"""The database: one engine and session factory per app (SQLite by default, any SQLAlchemy URL).

No module-level engine: `Database(url)` is built by `create_app` and by `tinysub token`, so tests
and tools each get their own. The schema comes from the migrations (services/migrations).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from services import migrations


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    # WAL lets the job runner write while requests read; busy_timeout turns lock contention
    # into a short wait instead of "database is locked".
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


class Database:
    """Engine + session factory. `migrate()` brings the schema to head (idempotent)."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        kwargs: dict = {"echo": echo, "future": True}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        else:
            kwargs["pool_pre_ping"] = True
        self.engine: Engine = create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self.sessionmaker = sessionmaker(self.engine, expire_on_commit=False)

    def migrate(self, *, allow_upgrade: bool = True) -> migrations.SchemaState:
        """Upgrade the schema to head (creating it in an empty database), or with
        `allow_upgrade=False` only check that it is there; `SchemaMismatch` says what to run."""
        return migrations.ensure_schema(self.engine, allow_upgrade=allow_upgrade)

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits on success and rolls back on any exception."""
        with self.sessionmaker() as s:
            try:
                yield s
                s.commit()
            except BaseException:
                s.rollback()
                raise

    def dispose(self) -> None:
        self.engine.dispose()
