"""Databases for the migration tests, on any URL (SQLite here, PostgreSQL in tests/integration):
one made the way release 0.1.0 made it, with rows in every table; everything a database holds;
the schema as reflected; the differences between the models and a migrated database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from services import migrations
from services.db import Database
from services.models import Alias, Base, Basis, Job, Run, Task, Token, Trajectory
from services.security import create_token
from tests.services.helpers import small_layout

T0 = datetime(2026, 5, 1, 12, 30, 15, 123456, tzinfo=UTC)


def build_previous_release(url: str) -> str:
    """Make the database that tinysub 0.1.0 left behind: `create_all()` (no alembic_version)
    and a row in every table, some of each status. Returns the plain admin token it holds."""
    # 0.1.0's schema is the current models' only while head is the baseline. When a revision
    # lands, build this from revision 0001 instead (command.upgrade(cfg, "0001"), then drop
    # alembic_version) and insert the rows with Core on the reflected tables.
    assert migrations.head() == migrations.BASELINE, "freeze the 0.1.0 schema here (see above)"
    db = Database(url)
    try:
        Base.metadata.create_all(db.engine)
        layout = small_layout()
        layer = {"name": "layer.0", "shape": [1230, 3], "dtype": "float32", "sha256": "c" * 64,
                 "nbytes": 14760, "singular_values": [3.0, 2.0, 1.0], "energy": [0.6, 0.9, 1.0],
                 "total_energy": 14.0, "extent": [0.1, 0.05, 0.01]}  # fmt: skip
        with db.session() as s:
            _, plain = create_token(s, "admin", ["admin"])
            s.add(Token(name="old", token_hash="0" * 64, scopes=["read"], revoked_at=T0))
            for task_id, model in (("sst2", "bert-base-uncased"), ("mrpc", "roberta-base")):
                s.add(Task(id=task_id, model=model, revision="a1b2c3", layout_hash=layout.hash,
                           layout=layout.to_dict(), description=f"{task_id}: é ✓ \"quoted\"",
                           created_at=T0))  # fmt: skip
            s.flush()
            s.add(Trajectory(task_id="sst2", url="s3://tinysub/registry/trajectories/sst2",
                             source="upload", rows=12, created_at=T0, updated_at=T0))  # fmt: skip
            s.add(Trajectory(task_id="mrpc", url="s3://tinysub/incoming/mrpc", source="url",
                             dtype="float16", rows=7))  # fmt: skip
            ready = Basis(task_id="sst2", kind="task", version=1, status="ready",
                          params={"rank": 3, "method": "gram"}, url="s3://tinysub/bases/v1",
                          layers=[layer], inputs_digest="d" * 64, created_at=T0,
                          ready_at=T0 + timedelta(minutes=3))  # fmt: skip
            failed = Basis(task_id="sst2", kind="random", version=1, status="failed",
                           params={"k": 3, "seed": 7}, url="s3://tinysub/bases/r1",
                           error="worker lost: out of memory")  # fmt: skip
            pending = Basis(task_id="mrpc", kind="unified", version=1, params={"rank": 2},
                            url="s3://tinysub/bases/u1")  # fmt: skip
            s.add_all([ready, failed, pending])
            s.flush()
            s.add_all([
                Alias(task_id="sst2", kind="task", name="latest", version=1, updated_at=T0),
                Alias(task_id="sst2", kind="task", name="paper", version=1),
            ])  # fmt: skip
            s.add_all([
                Job(basis_id=ready.id, status="succeeded", attempts=1, owner="host-a:17",
                    progress={"phase": "done", "phases": {"gram": {"done": 4, "total": 4}},
                              "layers": {"layer.0": "ready"}},
                    started_at=T0, heartbeat_at=T0, finished_at=T0 + timedelta(minutes=3)),
                Job(basis_id=failed.id, status="failed", attempts=3, error="out of memory",
                    error_code="resource_exhausted", cancel_requested=True),
                Job(basis_id=pending.id),
            ])  # fmt: skip
            s.add(Run(task_id="mrpc", method="subspace", basis_task_id="sst2", basis_kind="task",
                      basis_version=1, seed=3, params={"lr": 1e-4, "d": 16},
                      metrics={"accuracy": 0.91, "loss": 0.25}, seconds=12.5))  # fmt: skip
        return plain
    finally:
        db.dispose()


def contents(url: str, like: dict | None = None) -> dict[str, tuple[list[str], list[tuple]]]:
    """Every row of every table (read by reflection, so a database of any revision), as
    {table: (columns, sorted rows)}. With `like`, only its tables and columns: after an upgrade
    that added columns, `contents(url, like=before) == before` says nothing was lost."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            meta = sa.MetaData()
            meta.reflect(conn)
            wanted = like or {
                name: ([c.name for c in table.columns], [])
                for name, table in meta.tables.items()
                if name != "alembic_version"
            }
            out = {}
            for name, (columns, _) in wanted.items():
                table = meta.tables[name]
                rows = conn.execute(sa.select(*(table.c[c] for c in columns))).all()
                out[name] = (columns, sorted(map(tuple, rows), key=repr))
            return out
    finally:
        engine.dispose()


def schema(url: str) -> dict[str, Any]:
    """The schema as the database reports it: per table its columns, keys, indexes and
    constraints, with the names the database gave them (alembic_version left out)."""
    engine = sa.create_engine(url)
    try:
        insp = sa.inspect(engine)
        out = {}
        for table in sorted(set(insp.get_table_names()) - {"alembic_version"}):
            out[table] = {
                "columns": [
                    (c["name"], str(c["type"]), c["nullable"], c.get("default"))
                    for c in insp.get_columns(table)
                ],
                "primary_key": insp.get_pk_constraint(table),
                "foreign_keys": sorted(insp.get_foreign_keys(table), key=repr),
                "indexes": sorted(insp.get_indexes(table), key=repr),
                "unique": sorted(insp.get_unique_constraints(table), key=repr),
            }
        return out
    finally:
        engine.dispose()


def model_differences(url: str) -> list:
    """What autogenerate would write to make the database match the models: [] when the
    revisions and services/models.py agree."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()
