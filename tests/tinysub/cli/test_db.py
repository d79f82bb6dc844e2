"""`tinysub db upgrade` and `tinysub db current`, straight on a SQLite registry database."""

from __future__ import annotations

import json
import sqlite3

from services import migrations
from tests.services.migration_cases import build_previous_release, contents
from tinysub.cli.main import run


def _current(data_dir, capsys) -> tuple[int, dict]:
    code = run(["db", "current", "--data-dir", str(data_dir), "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_upgrade_creates_a_fresh_database_and_is_idempotent(tmp_path, capsys):
    data_dir = tmp_path / "registry"
    code, state = _current(data_dir, capsys)
    assert (code, state["kind"], state["revision"]) == (1, "empty", None)

    assert run(["db", "upgrade", "--data-dir", str(data_dir)]) == 0
    assert f"empty -> revision {migrations.head()}" in capsys.readouterr().out
    assert run(["db", "upgrade", "--data-dir", str(data_dir), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert (again["before_kind"], again["revision"]) == ("current", migrations.head())
    assert run(["db", "upgrade", "--data-dir", str(data_dir)]) == 0
    assert "already at revision" in capsys.readouterr().out

    code, state = _current(data_dir, capsys)
    assert (code, state["kind"], state["revision"]) == (0, "current", migrations.head())
    # The token commands use the upgraded database as it is.
    assert (
        run(["token", "create", "--name", "a", "--scope", "read", "--data-dir", str(data_dir)]) == 0
    )


def test_upgrade_stamps_a_previous_release_database(tmp_path, capsys, monkeypatch):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    build_previous_release(url)
    before = contents(url)
    monkeypatch.setenv("TINYSUB_DATABASE_URL", url)  # the server's setting, no option
    code = run(["db", "current"])
    assert code == 1 and "tinysub 0.1.0" in capsys.readouterr().err
    assert run(["db", "upgrade"]) == 0
    assert "tinysub 0.1.0, unstamped -> revision" in capsys.readouterr().out
    assert contents(url, like=before) == before
    assert run(["db", "current"]) == 0


def test_commands_refuse_a_database_from_a_newer_release(tmp_path, capsys):
    data_dir = tmp_path / "registry"
    assert run(["db", "upgrade", "--data-dir", str(data_dir)]) == 0
    with sqlite3.connect(data_dir / "registry.db") as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'f00d'")
    capsys.readouterr()
    assert run(["db", "upgrade", "--data-dir", str(data_dir)]) == 2
    assert "newer release" in capsys.readouterr().err
    code, state = _current(data_dir, capsys)
    assert (code, state["kind"]) == (2, "unknown")
    assert run(["token", "list", "--data-dir", str(data_dir)]) == 2  # as the server would


def test_token_commands_follow_migrate_on_start(tmp_path, capsys, monkeypatch):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    build_previous_release(url)
    monkeypatch.setenv("TINYSUB_DATABASE_URL", url)
    monkeypatch.setenv("TINYSUB_MIGRATE_ON_START", "false")
    assert run(["token", "list"]) == 2
    assert "run `tinysub db upgrade`" in capsys.readouterr().err
    monkeypatch.delenv("TINYSUB_MIGRATE_ON_START")
    assert run(["token", "list"]) == 0 and "admin" in capsys.readouterr().out
