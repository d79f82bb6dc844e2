"""The registry's schema migrations on SQLite (on PostgreSQL: tests/integration/
test_postgres_migrations.py).

A database of the previous release upgrades with every row kept, the revisions build exactly what
the models describe (the check CI runs: autogenerate finds nothing to do), and the start-up rule
holds: upgrade under a lock by default, refuse with what to run otherwise.
"""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from services import migrations
from services.app import create_app
from services.db import Database
from services.migrations import SchemaMismatch
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


@pytest.fixture
def url(tmp_path):
    return f"sqlite:///{tmp_path / 'registry.db'}"


def _state(url: str) -> migrations.SchemaState:
    db = Database(url)
    try:
        return migrations.current(db.engine)
    finally:
        db.dispose()


def test_previous_release_database_upgrades_and_keeps_every_row(url, tmp_path):
    token = build_previous_release(url)
    before = contents(url)
    assert set(before) == migrations.BASELINE_TABLES
    assert all(rows for _, rows in before.values()), "every table holds rows"
    assert _state(url).kind == "legacy"

    db = Database(url)
    try:
        old, new = migrations.upgrade(db.engine)
    finally:
        db.dispose()
    assert (old.kind, new.revision, new.kind) == ("legacy", migrations.head(), "current")
    assert contents(url, like=before) == before
    assert_jobs_became_basis_jobs(url)

    # The registry starts on it and serves what 0.1.0 stored, to 0.1.0's token.
    app = create_app(make_settings(tmp_path, database_url=url))
    http = TestClient(app, headers=auth(token))
    tasks = http.get("/v1/tasks").json()
    assert [t["id"] for t in tasks["items"]] == ["mrpc", "sst2"]
    assert {t["id"]: t["rows"] for t in tasks["items"]} == {"mrpc": 7, "sst2": 12}
    aliases = http.get("/v1/tasks/sst2/bases/task/aliases").json()
    assert {a["name"] for a in aliases} == {"latest", "paper"}
    app.state.registry.db.dispose()


def test_the_registry_upgrades_a_previous_release_database_when_it_starts(url, tmp_path):
    build_previous_release(url)
    before = contents(url)
    app = create_app(make_settings(tmp_path, database_url=url))
    app.state.registry.db.dispose()
    assert _state(url).kind == "current"
    assert contents(url, like=before) == before


def test_models_and_migrations_agree(url):
    """The CI check: a database built by the revisions is what services/models.py describes.
    When it fails, write the missing revision: python -m services.migrations "what changed"."""
    db = Database(url)
    try:
        assert migrations.upgrade(db.engine)[1].kind == "current"
    finally:
        db.dispose()
    assert model_differences(url) == []


def test_the_revisions_build_what_create_all_builds(url, tmp_path):
    """Stricter than autogenerate: the same columns, types, keys and indexes, by name."""
    db = Database(url)
    try:
        migrations.upgrade(db.engine)
    finally:
        db.dispose()
    made = f"sqlite:///{tmp_path / 'create_all.db'}"
    engine = sa.create_engine(made)
    Base.metadata.create_all(engine)
    engine.dispose()
    assert schema(url) == schema(made)


def test_upgrade_is_idempotent_and_a_fresh_database_is_built_by_the_revisions(url):
    db = Database(url)
    try:
        assert migrations.current(db.engine).kind == "empty"
        old, new = migrations.upgrade(db.engine)
        assert (old.kind, new.kind) == ("empty", "current")
        assert migrations.upgrade(db.engine) == (new, new)
        assert db.migrate(allow_upgrade=False) == new
    finally:
        db.dispose()


def test_concurrent_upgrades_take_turns(url):
    """Six processes' worth of connection pools upgrade one empty file at once: each waits for
    the write lock, and all but the first find head."""
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
    for db in dbs:
        db.dispose()
    assert errors == []
    assert sorted(old.kind for old, _ in results) == ["current"] * 5 + ["empty"]
    assert {new.kind for _, new in results} == {"current"}


def test_start_without_upgrade_refuses_and_says_what_to_run(url, tmp_path):
    build_previous_release(url)
    settings = make_settings(tmp_path, database_url=url, migrate_on_start=False)
    with pytest.raises(SchemaMismatch, match="tinysub db upgrade"):
        create_app(settings)
    assert _state(url).kind == "legacy"  # untouched


def test_a_database_from_a_newer_release_is_refused(url, tmp_path):
    db = Database(url)
    try:
        migrations.upgrade(db.engine)
        with db.engine.begin() as conn:
            conn.execute(sa.text("UPDATE alembic_version SET version_num = 'f00d'"))
        for attempt in (lambda: db.migrate(), lambda: migrations.upgrade(db.engine)):
            with pytest.raises(SchemaMismatch, match="f00d, which this tinysub does not know"):
                attempt()
    finally:
        db.dispose()
    with pytest.raises(SchemaMismatch, match="newer release"):
        create_app(make_settings(tmp_path, database_url=url))


def test_a_database_with_only_some_tables_is_refused_untouched(url):
    db = Database(url)
    try:
        Base.metadata.tables["tasks"].create(db.engine)
        with pytest.raises(SchemaMismatch, match=r"\(tasks\) but not aliases, bases, jobs"):
            migrations.upgrade(db.engine)
        names = set(sa.inspect(db.engine).get_table_names())
    finally:
        db.dispose()
    assert names == {"tasks"}


def test_revision_0002_downgrades_to_the_baseline(url, tmp_path):
    assert_downgrade_to_baseline(url, f"sqlite:///{tmp_path / 'baseline.db'}")


def test_the_revision_writer_numbers_the_next_revision(tmp_path, monkeypatch):
    """`python -m services.migrations "message"`, on a copy of the revisions: with the models
    unchanged it writes an empty revision on top of head, numbered one higher."""
    import shutil

    from services.migrations.__main__ import main

    assert main([]) == 2  # no message
    copy = tmp_path / "migrations"
    shutil.copytree(migrations.DIRECTORY, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(migrations, "DIRECTORY", copy)
    migrations._script.cache_clear()
    try:
        assert main(["add nothing"]) == 0
    finally:
        monkeypatch.undo()
        migrations._script.cache_clear()
        migrations._known_revisions.cache_clear()
    (written,) = (copy / "versions").glob("0003_*.py")
    text = written.read_text()
    assert written.name == "0003_add_nothing.py"
    assert "down_revision = '0002'" in text and "pass" in text
    assert migrations.head() == "0002"  # the real revisions again
