"""Schema migrations of the registry database (Alembic), on SQLite and PostgreSQL.

The revisions live in versions/ beside this file and the Alembic configuration is built here, so
they run from an installed package with no alembic.ini. `upgrade(engine)` brings a database to
head in one transaction, one process at a time, whatever it finds:

- no tinysub table: the revisions create the schema (`create_all()` is never used);
- the tables of release 0.1.0 and no `alembic_version` (its `create_all()` made them): stamped
  at the baseline revision, then upgraded;
- an older revision: upgraded; head: nothing to do;
- a revision this code does not know (a newer release upgraded the database), or only some of
  the tables: refused with `SchemaMismatch`, which says what to do.

Concurrent upgrades are safe. On PostgreSQL a transaction-scoped advisory lock is taken before
anything is read and DDL is transactional, so a second process waits, then finds head. On
SQLite the upgrade holds the database's write lock (`BEGIN EXCLUSIVE`) throughout, with foreign
keys checked at the end instead of per statement (batch migrations copy tables).

A new revision after a change to services/models.py: `python -m services.migrations "message"`
writes versions/NNNN_message.py from autogenerate; read it, then run the tests (one of them fails
while the models and the revisions disagree).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, Engine

from storage.errors import SchemaMismatch

log = logging.getLogger(__name__)

BASELINE = "0001"
# The tables of release 0.1.0, the last one without migrations: what `create_all()` made.
BASELINE_TABLES = frozenset({"tasks", "trajectories", "bases", "aliases", "jobs", "tokens", "runs"})
# The advisory lock of upgrades (b"tinysub\0" as a big-endian bigint). PostgreSQL scopes advisory
# locks to the database, so one fixed key serves every tinysub database of a server.
ADVISORY_LOCK = 0x74696E7973756200
DIRECTORY = Path(__file__).resolve().parent
# Alembic's `op` and `context` are module-level proxies: one command at a time per process.
_ALEMBIC = threading.Lock()


@dataclass(frozen=True)
class SchemaState:
    """What a database holds: its revision (None without `alembic_version`) and which of the
    baseline tables exist. `kind` names the case; `describe()` says it in words."""

    revision: str | None
    head: str
    tables: frozenset[str]
    known: bool

    @property
    def kind(self) -> str:
        if self.revision is None:
            if not self.tables:
                return "empty"
            return "legacy" if self.tables == BASELINE_TABLES else "partial"
        if not self.known:
            return "unknown"
        return "current" if self.revision == self.head else "behind"

    def describe(self) -> str:
        rev, head = self.revision, self.head
        have, lack = sorted(self.tables), sorted(BASELINE_TABLES - self.tables)
        return {
            "empty": "the database has no tinysub tables: run `tinysub db upgrade` to create "
            f"them at revision {head}",
            "legacy": "the database was made by tinysub 0.1.0 (its tables, no alembic_version): "
            f"back it up, then run `tinysub db upgrade` to stamp it at revision {BASELINE} and "
            f"upgrade it to {head}",
            "partial": f"the database has some of tinysub's tables ({', '.join(have)}) but not "
            f"{', '.join(lack)}, and no alembic_version: tinysub did not make it; point "
            "TINYSUB_DATABASE_URL at an empty database or a tinysub one",
            "unknown": f"the database is at revision {rev}, which this tinysub does not know "
            f"(its newest is {head}): a newer release upgraded it; run that release, or restore "
            "a backup made before the upgrade",
            "behind": f"the database is at revision {rev} and this tinysub needs {head}: back it "
            "up, then run `tinysub db upgrade`",
            "current": f"the database is at revision {head}, the newest",
        }[self.kind]


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration for the revisions in this package, on `connection` (env.py
    runs every command on it)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(DIRECTORY))
    cfg.set_main_option("path_separator", "os")
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


@functools.cache
def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


@functools.cache
def _known_revisions() -> frozenset[str]:
    return frozenset(s.revision for s in _script().walk_revisions())


def head() -> str:
    """The newest revision this code knows."""
    return _script().get_current_head()


def inspect_schema(connection: Connection) -> SchemaState:
    names = set(sa.inspect(connection).get_table_names())
    revision = None
    if "alembic_version" in names:
        revision = MigrationContext.configure(connection).get_current_revision()
    return SchemaState(
        revision=revision,
        head=head(),
        tables=frozenset(names & BASELINE_TABLES),
        known=revision is None or revision in _known_revisions(),
    )


def current(engine: Engine) -> SchemaState:
    """Where the database stands (reads only; takes no lock)."""
    with engine.connect() as conn:
        return inspect_schema(conn)


def upgrade(engine: Engine) -> tuple[SchemaState, SchemaState]:
    """Bring the database to head under the upgrade lock; return the states before and after.
    Running it again is a no-op. Raises `SchemaMismatch` for an unknown revision or a database
    with only some of the tables, and changes nothing then."""
    with _upgrade_lock(engine) as conn:
        before = inspect_schema(conn)
        if before.kind in ("unknown", "partial"):
            raise SchemaMismatch(before.describe())
        if before.kind == "current":
            return before, before
        cfg = alembic_config(conn)
        with _ALEMBIC:
            if before.kind == "legacy":
                log.info("stamping a tinysub 0.1.0 database at revision %s", BASELINE)
                command.stamp(cfg, BASELINE)
            command.upgrade(cfg, "head")
        after = inspect_schema(conn)
    log.info("database upgraded from %s to %s", before.revision or before.kind, after.revision)
    return before, after


def ensure_schema(engine: Engine, *, allow_upgrade: bool = True) -> SchemaState:
    """The start-up check: a database at head passes; otherwise `allow_upgrade` upgrades it (see
    `upgrade`), and without it `SchemaMismatch` says what to run."""
    state = current(engine)  # the common case, head, needs no lock
    if state.kind == "current":
        return state
    if state.kind in ("unknown", "partial"):
        raise SchemaMismatch(state.describe())
    if not allow_upgrade:
        raise SchemaMismatch(
            "schema upgrades at start are off (TINYSUB_MIGRATE_ON_START=false) and "
            + state.describe()
        )
    return upgrade(engine)[1]


@contextlib.contextmanager
def _upgrade_lock(engine: Engine) -> Iterator[Connection]:
    """A connection in a transaction that only one process at a time can hold; committed when
    the block ends, rolled back on any error."""
    dialect = engine.dialect.name
    with engine.connect() as conn:
        if dialect == "sqlite":
            # PRAGMA foreign_keys is a no-op inside a transaction: switch it off first, so that
            # a batch migration can drop and re-create a referenced table.
            conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
            conn.commit()
            conn.exec_driver_sql("BEGIN EXCLUSIVE")
        elif dialect == "postgresql":
            key = {"key": ADVISORY_LOCK}
            if not conn.scalar(sa.text("SELECT pg_try_advisory_xact_lock(:key)"), key):
                log.info("waiting for another process' database upgrade to finish")
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), key)
        try:
            yield conn
            if dialect == "sqlite":
                broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                if broken:
                    raise SchemaMismatch(
                        f"after the upgrade {len(broken)} rows have a foreign key that points "
                        f"nowhere (table, rowid, parent, fk): {broken[:5]}; nothing was changed"
                    )
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        finally:
            if dialect == "sqlite":
                conn.exec_driver_sql("PRAGMA foreign_keys=ON")
                conn.commit()
