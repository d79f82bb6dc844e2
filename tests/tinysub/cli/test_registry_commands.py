"""The registry commands of `tinysub`, against the app in-process (open_client is the seam)."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from client.client import Client
from services.app import create_app
from services.db import Database
from services.security import authenticate
from tests.services.helpers import make_settings, small_layout, write_store
from tinysub.cli import remote
from tinysub.cli.main import run


@pytest.fixture
def registry(tmp_path, monkeypatch):
    settings = make_settings(tmp_path, run_jobs=True)
    app = create_app(settings)
    with TestClient(app) as http:

        def open_client(url, token, **kw):
            return Client(url, token=token, http=http, **kw)

        monkeypatch.setattr(remote, "open_client", open_client)
        monkeypatch.setenv("TINYSUB_URL", "http://testserver")
        monkeypatch.setenv("TINYSUB_CACHE", str(tmp_path / "cache"))
        yield settings


def _token(settings, capsys, *scopes):
    argv = ["token", "create", "--name", "cli", "--data-dir", str(settings.data_dir), "--json"]
    for s in scopes:
        argv += ["--scope", s]
    assert run(argv) == 0
    return json.loads(capsys.readouterr().out)["token"]


def test_token_commands_work_on_the_database(registry, capsys, tmp_path):
    token = _token(registry, capsys, "read")
    db = Database(registry.resolved_database_url)
    with db.session() as s:
        assert authenticate(s, token).scopes == ["read"]
    assert run(["token", "list", "--data-dir", str(registry.data_dir)]) == 0
    assert "cli" in capsys.readouterr().out
    assert run(["token", "revoke", "1", "--data-dir", str(registry.data_dir)]) == 0
    with db.session() as s:
        assert authenticate(s, token) is None
    assert run(["token", "revoke", "99", "--data-dir", str(registry.data_dir)]) == 2
    # A bad scope, alone or beside a good one, is refused before any database is opened.
    fresh = tmp_path / "fresh"
    for scopes in (["root"], ["read", "root"]):
        args = [a for s in scopes for a in ("--scope", s)]
        assert run(["token", "create", "--name", "x", *args, "--data-dir", str(fresh)]) == 2
        assert "not valid" in capsys.readouterr().err
    assert not fresh.exists()


def test_task_basis_jobs_recompute_flow(registry, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TINYSUB_TOKEN", _token(registry, capsys, "write"))
    layout = small_layout()
    local = write_store(tmp_path / "local", "a", layout, rows=5)
    assert run(["task", "create", "a", "--model", "tiny", "--store", local.url]) == 0
    assert run(["task", "upload", "a", local.url, "-q"]) == 0
    assert "5 rows committed" in capsys.readouterr().out
    assert run(["task", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["rows"] == 5

    assert run(["basis", "order", "a", "--rank", "2", "--wait", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "succeeded"
    assert run(["basis", "order", "a", "--kind", "random", "-k", "2", "--seed", "3", "--wait"]) == 0
    capsys.readouterr()
    assert run(["basis", "list", "a", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert sorted((b["kind"], b["status"]) for b in listed) == [
        ("random", "ready"),
        ("task", "ready"),
    ]
    assert run(["basis", "pull", "a", "--json", "-q"]) == 0
    pulled = json.loads(capsys.readouterr().out)
    assert pulled["version"] == 1 and set(pulled["files"]) == set(layout.group_names)
    assert run(["basis", "pull", "a", "--offline", "--json", "-q"]) == 0
    assert json.loads(capsys.readouterr().out)["files"] == pulled["files"]

    assert run(["basis", "alias", "a", "task", "production", "1"]) == 0
    assert "production -> v1" in capsys.readouterr().out
    assert run(["basis", "alias", "a", "task", "latest", "1"]) == 2  # one clear error line
    assert "latest" in capsys.readouterr().err

    assert run(["recompute", "--task", "a", "--kind", "task", "--wait", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [(i["kind"], i["version"]) for i in result["queued"]] == [("task", 2)]
    assert run(["recompute", "--task", "a", "--dry-run"]) == 0  # a table of what it would do
    out = capsys.readouterr().out
    assert "a/random" in out and "1 skipped" not in out and "2 queued, 0 skipped" in out
    assert run(["recompute", "--task", "a", "--dry-run", "--detach", "--json"]) == 0
    detached = json.loads(capsys.readouterr().out)
    assert (detached["kind"], detached["basis"]) == ("recompute", None)
    assert run(["jobs", "wait", str(detached["id"]), "-q"]) == 0
    assert f"job {detached['id']}: succeeded" in capsys.readouterr().out
    assert run(["jobs", "list", "--json"]) == 0
    jobs = json.loads(capsys.readouterr().out)
    assert [(j["kind"], j["status"]) for j in jobs] == [
        ("recompute", "succeeded"),  # the detached dry run
        ("recompute", "succeeded"),  # the dry run
        ("basis", "succeeded"),  # what the first recompute queued
        ("recompute", "succeeded"),
        ("basis", "succeeded"),
        ("basis", "succeeded"),
    ]
    assert run(["jobs", "list"]) == 0 and "recompute" in capsys.readouterr().out
    assert run(["jobs", "show", str(jobs[0]["id"])]) == 0
    assert json.loads(capsys.readouterr().out)["result"]["queued"][0]["job_id"] is None
    assert run(["jobs", "cancel", str(jobs[0]["id"])]) == 2  # already finished
    assert run(["basis", "order", "ghost"]) == 2
    assert "ghost" in capsys.readouterr().err


def test_read_token_cannot_order(registry, capsys, monkeypatch):
    monkeypatch.setenv("TINYSUB_TOKEN", _token(registry, capsys, "read"))
    assert run(["basis", "order", "a"]) == 2
    assert "scopes" in capsys.readouterr().err


def test_unreachable_registry_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(remote, "open_client", remote.open_client)
    code = run(["jobs", "list", "--url", "http://127.0.0.1:9"])
    assert code == 2
    assert "cannot reach the registry" in capsys.readouterr().err


def test_waiting_shows_the_jobs_phase_and_progress_on_a_terminal(
    registry, tmp_path, capsys, monkeypatch
):
    import io

    from rich.console import Console

    from tinysub.cli import common

    monkeypatch.setenv("TINYSUB_TOKEN", _token(registry, capsys, "write"))
    local = write_store(tmp_path / "local", "a", small_layout(), rows=5)
    assert run(["task", "create", "a", "--model", "tiny", "--store", local.url]) == 0
    assert run(["task", "upload", "a", local.url, "-q"]) == 0
    screen = io.StringIO()
    monkeypatch.setattr(common, "err_console", Console(file=screen, force_terminal=True, width=120))
    assert run(["basis", "order", "a", "--rank", "2", "--wait"]) == 0
    shown = screen.getvalue()
    assert "job 1 a/task v1" in shown and "succeeded" in shown and "100%" in shown
    # --quiet, or a stderr that is not a terminal: no bar at all
    screen.truncate(0)
    assert run(["jobs", "wait", "1", "--quiet"]) == 0
    assert screen.getvalue() == ""
    monkeypatch.setattr(common, "err_console", Console(file=screen, force_terminal=False))
    assert run(["basis", "order", "a", "--rank", "2", "--wait"]) == 0
    assert screen.getvalue() == ""


def test_job_fraction_reads_the_current_phase():
    from client.jobs import Job

    data = {"id": 1, "status": "running", "basis": {}, "attempts": 1}
    progress = {"phase": "project", "phases": {"gram": {"done": 4, "total": 4}}}
    job = Job(
        None, {**data, "progress": {**progress, "phases": {"project": {"done": 1, "total": 4}}}}
    )
    assert job.fraction == 0.25
    assert Job(None, {**data, "progress": progress}).fraction is None  # no counts for the phase
    assert Job(None, {**data, "progress": {}}).fraction is None
