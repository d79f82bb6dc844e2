"""One table maps every error type to its status; bodies are {code, message, detail}."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from services.errors import STATUS, PayloadTooLarge, RangeNotSatisfiable, status_for
from storage.errors import ERROR_TYPES, LayoutMismatch
from tests.services.helpers import api_client, make_app


def test_every_error_type_has_a_status():
    for code, cls in ERROR_TYPES.items():
        status = status_for(cls("x"))
        assert 400 <= status < 600, code
    assert status_for(LayoutMismatch("x")) == 422
    assert STATUS[PayloadTooLarge] == 413 and STATUS[RangeNotSatisfiable] == 416


def test_error_bodies_have_code_message_detail(api):
    r = api.get("/v1/tasks/missing")
    assert set(r.json()) == {"code", "message", "detail"}
    r = api.get("/v1/nowhere")
    assert r.status_code == 404 and r.json()["code"] == "not_found"
    r = api.delete("/v1/tasks")
    assert r.status_code == 405 and set(r.json()) == {"code", "message", "detail"}


def test_validation_errors_do_not_echo_inputs(api):
    secret = "s3cr3t-value-that-must-not-come-back"
    r = api.post("/v1/tokens", json={"name": "x", "scopes": [secret]})
    assert r.status_code == 422
    assert secret not in r.text


def test_malformed_and_oversized_json(tmp_path):
    app = make_app(tmp_path, max_json_bytes=2048)
    api = api_client(app)
    r = api.post("/v1/tasks", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["code"] == "invalid_input"
    big = b'{"id": "t", "model": "' + b"m" * 4000 + b'", "layout": {}}'
    r = api.post("/v1/tasks", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["code"] == "payload_too_large"


def test_oversized_body_without_content_length_is_stopped_while_read(tmp_path):
    app = make_app(tmp_path, max_json_bytes=2048)
    api = api_client(app)

    def chunks():
        for _ in range(10):
            yield b" " * 1000

    r = api.post("/v1/tasks", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["code"] == "payload_too_large"


def test_openapi_is_served(app):
    doc = TestClient(app).get("/openapi.json").json()
    assert "/v1/tasks/{task_id}/bases/{kind}" in doc["paths"]
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


def test_out_of_range_numbers_are_422_not_500(api, layout):
    huge = 2**70
    assert api.get(f"/v1/jobs/{huge}").status_code == 422
    assert api.post(f"/v1/jobs/{huge}/cancel").status_code == 422
    assert api.delete(f"/v1/tokens/{huge}").status_code == 422
    assert api.get("/v1/tasks", params={"offset": huge}).status_code == 422
    api.post("/v1/tasks", json={"id": "t", "model": "m", "layout": layout.to_dict()})
    r = api.put("/v1/tasks/t/bases/task/aliases/x", json={"version": huge})
    assert r.status_code == 422
    nan = b'{"task_id": "t", "method": "full", "metrics": {"acc": NaN}}'
    r = api.post("/v1/runs", content=nan, headers={"Content-Type": "application/json"})
    assert r.status_code == 422


@pytest.mark.parametrize(
    "doc",
    [
        {"rule": "bert", "groups": [{"name": 5, "params": []}]},
        {
            "rule": "bert",
            "groups": [{"name": "g", "params": [{"name": "w", "shape": [1e300], "offset": 0}]}],
        },
        {
            "rule": "bert",
            "groups": [{"name": "g", "params": [{"name": "w", "shape": [-3], "offset": 0}]}],
        },
        {
            "rule": "bert",
            "groups": [{"name": "g", "params": [{"name": "w", "shape": [1 << 40], "offset": 0}]}],
        },
        {"rule": "bert", "groups": "x"},
        {"groups": []},
        {
            "rule": "bert",
            "groups": [{"name": "g", "params": [{"name": ["w"], "shape": [2], "offset": 0}]}],
        },
    ],
)
def test_malformed_layouts_are_422(api, doc):
    r = api.post("/v1/tasks", json={"id": "t", "model": "m", "layout": doc})
    assert r.status_code == 422, r.text
