"""Access: every endpoint needs a token (401), the scope it needs (403), tokens are stored and
logged only as hashes, revocation is immediate (across processes and on a kept-alive
connection), and no path or URL a client gives can make the registry read or write outside its
store root and trusted prefixes."""

from __future__ import annotations

import hashlib
import logging
import os
import re

import fsspec
import httpx
import pytest
from fastapi.testclient import TestClient

from services.local import LocalServer
from storage.trajectory import TrajectoryStore
from tests.conftest import make_trajectory
from tests.reliability import snapshots
from tests.services.helpers import add_task, auth, make_app, token_for, write_store
from tinysub.cli.main import run

VALUES = {
    "task_id": "a",
    "kind": "task",
    "version": "1",
    "layer": "layer.0",
    "row": "6",
    "group": "layer.0",
    "name": "prod",
    "job_id": "1",
    "token_id": "1",
    "run_id": "1",
}
OPEN = {"/v1/health"}
ADMIN_ONLY = re.compile(r"^/v1/tokens")


def endpoints(app) -> list[tuple[str, str]]:
    """(method, concrete path) of every API operation, from the app's OpenAPI document (the
    route table the fuzzer also works from)."""
    out = []
    for template, ops in app.openapi()["paths"].items():
        path = re.sub(r"\{(\w+)\}", lambda m: VALUES[m.group(1)], template)
        out += [(m.upper(), path) for m in sorted(ops) if m != "parameters"]
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("access")
    app = make_app(tmp)
    admin = TestClient(app, headers=auth(token_for(app, "admin")))
    add_task(admin, tmp, "a", __import__("tests.services.helpers").services.helpers.small_layout())
    assert admin.post("/v1/tasks/a/bases", json={"kind": "task", "rank": 2}).status_code == 202
    app.state.runner.run_pending()
    return app, admin, tmp


def _body_for(method: str, path: str) -> dict:
    if method in ("GET", "HEAD", "DELETE"):
        return {}
    return {"json": {"version": 1, "name": "x", "scopes": ["admin"], "kind": "random"}}


def test_the_route_table_is_covered(world):
    app, _, _ = world
    found = endpoints(app)
    print("ENDPOINTS", len(found), found)
    assert len(found) >= 25 and ("POST", "/v1/tokens") in found


def test_no_token_is_401_everywhere_and_writes_nothing(world):
    app, _, tmp = world
    anon = TestClient(app)
    for method, path in endpoints(app):
        if path in OPEN:
            continue
        before = snapshots.registry(app, tmp / "stores")
        for headers in ({}, auth("tsk_forged"), {"Authorization": "Basic YTpi"}, auth("")):
            r = anon.request(method, path, headers=headers, **_body_for(method, path))
            assert r.status_code == 401, (method, path, headers, r.status_code, r.text)
            if method != "HEAD":
                assert r.json()["code"] == "unauthorized"
        assert snapshots.registry(app, tmp / "stores") == before, (method, path)


def test_read_token_cannot_write_order_or_delete(world):
    app, _, tmp = world
    reader = TestClient(app, headers=auth(token_for(app, "read", name="reader")))
    writer = TestClient(app, headers=auth(token_for(app, "write", name="writer")))
    for method, path in endpoints(app):
        if path in OPEN:
            continue
        before = snapshots.registry(app, tmp / "stores")
        r = reader.request(method, path, **_body_for(method, path))
        if method in ("GET", "HEAD") and not ADMIN_ONLY.match(path):
            assert r.status_code not in (401, 403), (method, path, r.status_code, r.text)
        else:
            assert r.status_code == 403, (method, path, r.status_code, r.text)
            assert snapshots.registry(app, tmp / "stores") == before, (method, path)
        if ADMIN_ONLY.match(path):
            before = snapshots.registry(app, tmp / "stores")
            assert writer.request(method, path, **_body_for(method, path)).status_code == 403
            assert snapshots.registry(app, tmp / "stores") == before


def test_tokens_are_hashed_at_rest_in_the_database_files(world):
    app, admin, _tmp = world
    plain = admin.post("/v1/tokens", json={"name": "disk", "scopes": ["read"]}).json()["token"]
    db = app.state.registry.settings.data_dir
    raw = b"".join((db / n).read_bytes() for n in os.listdir(db) if n.startswith("registry.db"))
    assert plain.encode() not in raw
    assert hashlib.sha256(plain.encode()).hexdigest().encode() in raw


def test_tokens_never_reach_the_logs(world, caplog):
    app, admin, _tmp = world
    caplog.set_level(logging.DEBUG)  # every logger, every level
    created = admin.post("/v1/tokens", json={"name": "logged?", "scopes": ["write"]}).json()
    secret = created["token"]
    user = TestClient(app, headers=auth(secret), raise_server_exceptions=False)
    user.get("/v1/tasks")
    user.post("/v1/tokens", json={"name": "x", "scopes": ["read"]})  # 403
    user.post("/v1/tasks", json={"id": secret, "model": secret})  # 422 echoing nothing
    TestClient(app, headers=auth(secret + "x")).get("/v1/tasks")  # 401, near miss
    admin.delete(f"/v1/tokens/{created['id']}")
    user.get("/v1/tasks")  # revoked
    assert caplog.records  # the capture works
    everything = caplog.text + "".join(repr(r.args) + repr(r.__dict__) for r in caplog.records)
    assert secret not in everything and secret[4:] not in everything


def test_live_server_logs_no_token_even_at_trace_level(tmp_path, capsys):
    server = LocalServer(tmp_path / "srv", log_level="trace")
    admin = server.admin_token()
    server.start()
    try:
        with httpx.Client(base_url=server.url, headers=auth(admin)) as http:
            created = http.post("/v1/tokens", json={"name": "t", "scopes": ["read"]}).json()
            http.get("/v1/tasks", headers=auth(created["token"]))
            http.get("/v1/tasks", headers=auth(created["token"] + "bad"))
            http.post("/v1/tasks", json={"id": created["token"]})
    finally:
        server.stop()
    log = server.log.read_text()
    assert "GET /v1/tasks" in log  # it did log the requests
    for secret in (admin, created["token"]):
        assert secret not in log and secret[4:] not in log


def test_revocation_is_immediate_across_processes_and_kept_alive_connections(tmp_path, capsys):
    server = LocalServer(tmp_path / "srv")
    admin = server.admin_token()
    server.start()
    try:
        with httpx.Client(base_url=server.url, headers=auth(admin)) as http:
            created = http.post("/v1/tokens", json={"name": "leaked", "scopes": ["read"]}).json()
            other = http.post("/v1/tokens", json={"name": "cli", "scopes": ["read"]}).json()
        # One kept-alive connection per token: revocation must not be cached per connection.
        user = httpx.Client(base_url=server.url, headers=auth(created["token"]))
        user2 = httpx.Client(base_url=server.url, headers=auth(other["token"]))
        with user, user2:
            assert user.get("/v1/tasks").status_code == 200
            assert user2.get("/v1/tasks").status_code == 200
            with httpx.Client(base_url=server.url, headers=auth(admin)) as http:
                assert http.delete(f"/v1/tokens/{created['id']}").status_code == 200
            assert user.get("/v1/tasks").status_code == 401
            # Revoked from another process straight on the database (`tinysub token revoke`).
            argv = ["token", "revoke", str(other["id"]), "--data-dir", str(server.data_dir)]
            assert run(argv) == 0
            assert user2.get("/v1/tasks").status_code == 401
    finally:
        server.stop()


# ------------------------------------------------------------------------ confinement
@pytest.fixture
def confined(tmp_path, layout):
    """A registry whose trusted prefix is tmp/stores (+ memory://trusted), with a real, valid
    store of the right layout *outside* every allowed root: if the registry ever opened it, the
    registration would succeed, so a refusal proves it was not read."""
    app = make_app(tmp_path, trusted_store_prefixes=[str(tmp_path / "stores"), "memory://trusted"])
    api = TestClient(app, headers=auth(token_for(app, "admin")))
    body = {"id": "t", "model": "tiny", "layout": layout.to_dict()}
    assert api.post("/v1/tasks", json=body).status_code == 201
    outside = write_store(tmp_path / "outside", "secret", layout, rows=3)
    (tmp_path / "stores").mkdir(exist_ok=True)
    os.symlink(outside.url, tmp_path / "stores" / "link")  # inside, pointing out
    os.symlink(tmp_path / "outside", tmp_path / "stores" / "dirlink")
    for url in ("memory://elsewhere/secret", "memory://trusted/ok"):
        TrajectoryStore.create(url, layout, chunk_cols=256)
        for row in make_trajectory(layout, 3):
            TrajectoryStore.open(url, read_only=False).append(row)
    yield app, api, outside
    fsspec.filesystem("memory").rm("/elsewhere", recursive=True)
    fsspec.filesystem("memory").rm("/trusted", recursive=True)


def _escapes(tmp, outside):
    o, s, root = str(outside.url), str(tmp / "stores"), str(tmp / "registry" / "store")
    return [
        o,
        f"file://{o}",
        f"{s}/../outside/secret",
        f"{s}/./../outside/secret",
        f"{s}/link",
        f"{s}/dirlink/secret",
        f"{s}//..//outside/secret",
        f"{root}/../../outside/secret",
        f"{s}/link/.",
        f"file://{s}/link",
        f"FILE://{o}",
        f"file://localhost{o}",
        f"simplecache::file://{o}",
        f"filecache::file://{o}",
        f"zip://x::file://{o}",
        f"reference://{o}",
        f"dir::{o}",
        "memory://elsewhere/secret",
        "memory://trusted/../elsewhere/secret",
        "memory://trusted/./../elsewhere/secret",
        "memory://trustedx/secret",
        f"memory://trusted/ok::file://{o}",
        f"memory://trusted/ok::simplecache::file://{o}",
        "memory:///elsewhere/secret",
        "http://127.0.0.1:1/secret",
        "s3://bucket/secret",
        "data:,secret",
        f"{o}\x00",
        f"{o}\n",
        f" {o}",
        f"{s}/\u202e/secret",
        "~/secret",
        "../outside/secret",
        "outside/secret",
        "/" * 3000,
    ]


def test_no_client_url_reads_outside_the_store(confined, tmp_path):
    app, api, outside = confined
    for url in _escapes(tmp_path, outside):
        before = snapshots.registry(app, tmp_path / "stores", tmp_path / "outside")
        r = api.post("/v1/tasks/t/trajectory", json={"url": url})
        print("ESC", repr(url)[:60], r.status_code, r.json()["message"][:70])
        assert r.status_code in (403, 404, 422), (url, r.status_code, r.text)
        assert r.json()["code"] in ("forbidden", "invalid_input", "not_found"), url
        assert snapshots.registry(app, tmp_path / "stores", tmp_path / "outside") == before, url
    # What settings allow is allowed: the trusted memory prefix works.
    r = api.post("/v1/tasks/t/trajectory", json={"url": "memory://trusted/ok"})
    assert r.status_code == 201 and r.json()["rows"] == 3


def test_no_client_path_writes_outside_the_store(confined, tmp_path):
    app, api, _outside = confined
    assert api.post("/v1/tasks/t/trajectory", json={}).status_code == 201
    everything = snapshots.files(tmp_path)
    for group in ("..%2F..%2F..%2Fpwn", "%2E%2E", "layer.0%2F..%2F..%2Fpwn", "%2Fabs", "~pwn"):
        r = api.put(f"/v1/tasks/t/trajectory/rows/0/groups/{group}", content=b"\0\0\0\0")
        assert 400 <= r.status_code < 500, (group, r.status_code, r.text)
    r = api.put("/v1/tasks/t/trajectory/rows/0/groups/layer.0", content=b"\0\0\0\0",
                params={"offset": "-1"})  # fmt: skip
    assert r.status_code == 422
    assert snapshots.files(tmp_path) == everything
    assert not list(tmp_path.rglob("pwn"))
