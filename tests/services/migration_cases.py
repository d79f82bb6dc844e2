"""Databases for the migration tests, on any URL (SQLite here, PostgreSQL in tests/integration):
one made the way release 0.1.0 made it, with rows in every table; everything a database holds;
the schema as reflected; the differences between the models and a migrated database."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from services import migrations
from services.models import Base
from services.security import TOKEN_PREFIX, hash_token
from tests.services.helpers import small_layout

T0 = datetime(2026, 5, 1, 12, 30, 15, 123456, tzinfo=UTC)


def build_previous_release(url: str) -> str:
    """Make the database that tinysub 0.1.0 left behind: its tables (revision 0001, which is
    what its `create_all()` made) without alembic_version, and a row in every table, some of
    each status. Returns the plain admin token it holds.

    The rows go in with Core inserts on the reflected tables, every column given: the models
    describe head, not 0.1.0 (their defaults and new columns do not apply here), and 0.1.0
    stored naive UTC datetimes."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            with migrations._ALEMBIC:
                command.upgrade(migrations.alembic_config(conn), migrations.BASELINE)
            conn.execute(sa.text("DROP TABLE alembic_version"))
        with engine.begin() as conn:
            meta = sa.MetaData()
            meta.reflect(conn)
            return _previous_release_rows(conn, meta.tables)
    finally:
        engine.dispose()


def _previous_release_rows(conn: sa.Connection, t: dict[str, sa.Table]) -> str:
    t0 = T0.replace(tzinfo=None)
    later = t0 + timedelta(minutes=3)
    layout = small_layout()
    layer = {"name": "layer.0", "shape": [1230, 3], "dtype": "float32", "sha256": "c" * 64,
             "nbytes": 14760, "singular_values": [3.0, 2.0, 1.0], "energy": [0.6, 0.9, 1.0],
             "total_energy": 14.0, "extent": [0.1, 0.05, 0.01]}  # fmt: skip
    plain = TOKEN_PREFIX + secrets.token_urlsafe(32)

    def insert(table: str, *rows: dict) -> list[int]:
        return [
            conn.execute(t[table].insert().values(**row)).inserted_primary_key[0] for row in rows
        ]

    insert(
        "tokens",
        dict(
            name="admin",
            token_hash=hash_token(plain),
            scopes=["admin"],
            created_at=t0,
            revoked_at=None,
        ),
        dict(name="old", token_hash="0" * 64, scopes=["read"], created_at=t0, revoked_at=t0),
    )
    for task_id, model in (("sst2", "bert-base-uncased"), ("mrpc", "roberta-base")):
        insert(
            "tasks",
            dict(
                id=task_id,
                model=model,
                revision="a1b2c3",
                layout_hash=layout.hash,
                layout=layout.to_dict(),
                description=f'{task_id}: é ✓ "quoted"',
                created_at=t0,
            ),
        )
    insert(
        "trajectories",
        dict(
            task_id="sst2",
            url="s3://tinysub/registry/trajectories/sst2",
            source="upload",
            dtype="float32",
            rows=12,
            created_at=t0,
            updated_at=t0,
        ),
        dict(
            task_id="mrpc",
            url="s3://tinysub/incoming/mrpc",
            source="url",
            dtype="float16",
            rows=7,
            created_at=t0,
            updated_at=later,
        ),
    )
    basis = dict(layers=None, inputs_digest=None, error=None, created_at=t0, ready_at=None)
    ready, failed, pending = insert(
        "bases",
        {
            **basis,
            "task_id": "sst2",
            "kind": "task",
            "version": 1,
            "status": "ready",
            "params": {"rank": 3, "method": "gram"},
            "url": "s3://tinysub/bases/v1",
            "layers": [layer],
            "inputs_digest": "d" * 64,
            "ready_at": later,
        },
        {
            **basis,
            "task_id": "sst2",
            "kind": "random",
            "version": 1,
            "status": "failed",
            "params": {"k": 3, "seed": 7},
            "url": "s3://tinysub/bases/r1",
            "error": "worker lost: out of memory",
        },
        {
            **basis,
            "task_id": "mrpc",
            "kind": "unified",
            "version": 1,
            "status": "pending",
            "params": {"rank": 2},
            "url": "s3://tinysub/bases/u1",
        },
    )
    insert(
        "aliases",
        dict(task_id="sst2", kind="task", name="latest", version=1, updated_at=t0),
        dict(task_id="sst2", kind="task", name="paper", version=1, updated_at=later),
    )
    job = dict(
        status="pending",
        progress={},
        error=None,
        error_code=None,
        attempts=0,
        cancel_requested=False,
        owner=None,
        created_at=t0,
        started_at=None,
        heartbeat_at=None,
        finished_at=None,
    )
    insert(
        "jobs",
        {
            **job,
            "basis_id": ready,
            "status": "succeeded",
            "attempts": 1,
            "owner": "host-a:17",
            "progress": {
                "phase": "done",
                "phases": {"gram": {"done": 4, "total": 4}},
                "layers": {"layer.0": "ready"},
            },
            "started_at": t0,
            "heartbeat_at": t0,
            "finished_at": later,
        },
        {
            **job,
            "basis_id": failed,
            "status": "failed",
            "attempts": 3,
            "error": "out of memory",
            "error_code": "resource_exhausted",
            "cancel_requested": True,
            "finished_at": later,
        },
        {**job, "basis_id": pending},
    )
    insert(
        "runs",
        dict(
            task_id="mrpc",
            method="subspace",
            basis_task_id="sst2",
            basis_kind="task",
            basis_version=1,
            seed=3,
            params={"lr": 1e-4, "d": 16},
            metrics={"accuracy": 0.91, "loss": 0.25},
            seconds=12.5,
            created_at=t0,
        ),
    )
    return plain


def assert_jobs_became_basis_jobs(url: str) -> None:
    """After revision 0002: the jobs of 0.1.0 are basis jobs, ordered by no known token, with
    no params or result."""
    columns, rows = contents(url)["jobs"]
    jobs = [dict(zip(columns, row, strict=True)) for row in rows]
    assert len(jobs) == 3
    assert {(j["kind"], j["token_id"], j["params"], j["result"]) for j in jobs} == {
        ("basis", None, None, None)
    }
    assert all(j["basis_id"] is not None for j in jobs)


def assert_downgrade_to_baseline(url: str, baseline: str) -> None:
    """A populated database upgraded to head, with a recompute job added, then downgraded to
    0001: the baseline's schema again (as `baseline`, an empty database, gets it), the basis
    jobs kept and the recompute job (which that schema cannot hold) deleted."""
    build_previous_release(url)
    before = contents(url)
    engine = sa.create_engine(baseline)
    try:
        with engine.begin() as conn, migrations._ALEMBIC:
            command.upgrade(migrations.alembic_config(conn), migrations.BASELINE)
    finally:
        engine.dispose()
    engine = sa.create_engine(url)
    try:
        migrations.upgrade(engine)
        with engine.begin() as conn:
            jobs = sa.Table("jobs", sa.MetaData(), autoload_with=conn)
            conn.execute(jobs.insert().values(
                kind="recompute", status="pending", progress={}, attempts=0,
                cancel_requested=False, created_at=T0.replace(tzinfo=None), params={}))  # fmt: skip
            with migrations._ALEMBIC:
                command.downgrade(migrations.alembic_config(conn), migrations.BASELINE)
    finally:
        engine.dispose()
    assert schema(url) == schema(baseline)
    assert contents(url, like=before) == before


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
