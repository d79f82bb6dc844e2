"""The schema migrations on a real PostgreSQL server (skipped, with the reason, where this machine
cannot run one; tests/services/test_migrations.py covers SQLite).

PostgreSQL names what `create_all()` left unnamed (tasks_pkey, bases_task_id_fkey) and really runs
upgrades side by side, so here the revisions must rebuild those names and the advisory lock must
make concurrent upgrades take turns.
"""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from services import migrations
from services.app import create_app
from services.db import Database
from services.models import Base
from tests.services.helpers import auth, make_settings
from tests.services.migration_cases import (
    assert_downgrade_to_baseline,
    assert_jobs_became_basis_jobs,
    build_previous_release,
    contents,
    model_differences,
    schema,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture
def database(postgres, request):
    """A new empty database per test, named after it."""

    def make(suffix: str = "") -> str:
        name = "m_" + "".join(ch if ch.isalnum() else "_" for ch in request.node.name)[:45]
        return postgres.create_database((name + suffix).lower())

    return make


def test_previous_release_database_upgrades_and_keeps_every_row(database, tmp_path):
    url = database()
    token = build_previous_release(url)
    before = contents(url)
    assert set(before) == migrations.BASELINE_TABLES
    assert all(rows for _, rows in before.values()), "every table holds rows"

    # The registry's own start-up upgrades it (stamp at the baseline, then head).
    app = create_app(make_settings(tmp_path, database_url=url))
    try:
        assert app.state.registry.db.engine.dialect.name == "postgresql"
        state = migrations.current(app.state.registry.db.engine)
        assert (state.revision, state.kind) == (migrations.head(), "current")
        assert contents(url, like=before) == before
        assert_jobs_became_basis_jobs(url)
        http = TestClient(app, headers=auth(token))
        assert [t["id"] for t in http.get("/v1/tasks").json()["items"]] == ["mrpc", "sst2"]
        aliases = http.get("/v1/tasks/sst2/bases/task/aliases").json()
        assert {a["name"] for a in aliases} == {"latest", "paper"}
    finally:
        app.state.registry.db.dispose()


def test_models_and_migrations_agree_by_name(database):
    """Autogenerate finds nothing to do, and the revisions give every key, constraint and index
    the name that PostgreSQL gave them under `create_all()`."""
    migrated, made = database("_a"), database("_b")
    db = Database(migrated)
    try:
        assert migrations.upgrade(db.engine)[1].kind == "current"
    finally:
        db.dispose()
    assert model_differences(migrated) == []
    engine = sa.create_engine(made)
    Base.metadata.create_all(engine)
    engine.dispose()
    assert schema(migrated) == schema(made)


def test_revision_0002_downgrades_to_the_baseline(database):
    assert_downgrade_to_baseline(database("_a"), database("_b"))


def test_concurrent_upgrades_take_turns(database):
    """Six connection pools (as six registry processes would hold) upgrade one empty database at
    the same moment: the advisory lock lets one create the schema; the others then find head."""
    url = database()
    dbs = [Database(url) for _ in range(6)]
    start = threading.Barrier(len(dbs))
    results: list = []
    errors: list = []

    def upgrade(db: Database) -> None:
        start.wait()
        try:
            results.append(migrations.upgrade(db.engine))
        except Exception as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=upgrade, args=(db,)) for db in dbs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert errors == []
        assert sorted(old.kind for old, _ in results) == ["current"] * 5 + ["empty"]
        with dbs[0].engine.connect() as conn:
            versions = conn.execute(sa.text("SELECT version_num FROM alembic_version")).all()
        assert versions == [(migrations.head(),)]
    finally:
        for db in dbs:
            db.dispose()
