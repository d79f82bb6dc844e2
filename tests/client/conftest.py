from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from client import Client
from services.app import create_app
from tests.services.helpers import make_settings, small_layout, token_for


@pytest.fixture
def layout():
    return small_layout()


@pytest.fixture
def server(tmp_path):
    """The registry app with its job runner running (TestClient's lifespan)."""
    app = create_app(make_settings(tmp_path, run_jobs=True))
    with TestClient(app) as http:
        yield app, http


@pytest.fixture
def admin_token(server):
    return token_for(server[0], "admin")


@pytest.fixture
def client(server, admin_token, tmp_path):
    app, http = server
    c = Client("http://testserver", token=admin_token, http=http, cache_dir=tmp_path / "cache")
    c.requests = []  # the (method, path, headers) this client sent, for tests to check
    http.event_hooks["request"] = [
        lambda req: c.requests.append((req.method, req.url.path, dict(req.headers)))
    ]
    return c
