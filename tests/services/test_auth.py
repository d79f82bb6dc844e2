"""Bearer tokens: 401 without, 403 without the scope, hashed at rest, revocation is immediate."""

from __future__ import annotations

import hashlib

from fastapi.testclient import TestClient
from sqlalchemy import select

from services.models import Token
from tests.services.helpers import auth, make_app, token_for


def test_missing_or_unknown_token_is_401(app, layout):
    anon = TestClient(app)
    r = anon.get("/v1/tasks")
    assert r.status_code == 401
    assert r.json()["code"] == "unauthorized"
    assert r.headers["www-authenticate"] == "Bearer"
    r = anon.get("/v1/tasks", headers=auth("tsk_not-a-real-token"))
    assert r.status_code == 401
    assert anon.get("/v1/tasks", headers={"Authorization": "Basic abc"}).status_code == 401


def test_health_needs_no_token(app):
    r = TestClient(app).get("/v1/health")
    assert r.status_code == 200
    assert r.json()["status"] == "ok"


def test_scopes_are_ordered_read_write_admin(app, layout):
    body = {"id": "t1", "model": "m", "layout": layout.to_dict()}
    reader = TestClient(app, headers=auth(token_for(app, "read")))
    writer = TestClient(app, headers=auth(token_for(app, "write")))
    admin = TestClient(app, headers=auth(token_for(app, "admin")))

    r = reader.post("/v1/tasks", json=body)
    assert r.status_code == 403 and r.json()["code"] == "forbidden"
    assert reader.get("/v1/tasks").json()["total"] == 0  # nothing was created

    assert writer.post("/v1/tasks", json=body).status_code == 201
    assert reader.get("/v1/tasks/t1").status_code == 200
    assert reader.post("/v1/tasks/t1/bases", json={"kind": "random"}).status_code == 403
    assert reader.post("/v1/recompute", json={}).status_code == 403
    assert reader.post("/v1/jobs/1/cancel").status_code == 403

    r = writer.post("/v1/tokens", json={"name": "x", "scopes": ["read"]})
    assert r.status_code == 403
    r = admin.post("/v1/tokens", json={"name": "x", "scopes": ["read"]})
    assert r.status_code == 201 and r.json()["token"].startswith("tsk_")


def test_tokens_are_stored_hashed(app):
    admin = TestClient(app, headers=auth(token_for(app, "admin")))
    created = admin.post("/v1/tokens", json={"name": "ci", "scopes": ["write"]}).json()
    plain = created["token"]
    with app.state.registry.db.session() as s:
        row = s.get(Token, created["id"])
        assert row.token_hash == hashlib.sha256(plain.encode()).hexdigest()
        every_value = [str(v) for t in s.scalars(select(Token)) for v in vars(t).values()]
    assert not any(plain in v for v in every_value)
    assert all("token" not in t for t in admin.get("/v1/tokens").json())


def test_revoked_token_stops_at_once(app):
    admin = TestClient(app, headers=auth(token_for(app, "admin")))
    created = admin.post("/v1/tokens", json={"name": "leaked", "scopes": ["read"]}).json()
    user = TestClient(app, headers=auth(created["token"]))
    assert user.get("/v1/tasks").status_code == 200
    assert admin.delete(f"/v1/tokens/{created['id']}").json()["revoked_at"] is not None
    assert user.get("/v1/tasks").status_code == 401


def test_anonymous_read_is_off_by_default_and_read_only(tmp_path, layout):
    app = make_app(tmp_path, anonymous_read=True)
    anon = TestClient(app)
    assert anon.get("/v1/tasks").status_code == 200
    r = anon.post("/v1/tasks", json={"id": "t", "model": "m", "layout": layout.to_dict()})
    assert r.status_code == 401


def test_bad_scope_is_refused(app):
    admin = TestClient(app, headers=auth(token_for(app, "admin")))
    r = admin.post("/v1/tokens", json={"name": "x", "scopes": ["root"]})
    assert r.status_code == 422
