"""Metrics, request IDs and JSON logs (issue 16, item 4): scrape /v1/metrics after a short load
and check that each counter moved by what the load did; request IDs on responses and in the
log lines of a real `tinysub serve`."""

from __future__ import annotations

import json
import logging

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from services.local import LocalServer
from services.observability import JsonFormatter, RequestIdFilter, request_id
from tests.services.helpers import add_task, api_client, make_app, run_jobs


def _samples(api) -> dict[tuple[str, frozenset], float]:
    r = api.get("/v1/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def _value(samples, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
def served(tmp_path, layout):
    app = make_app(tmp_path)
    api = api_client(app, "admin")
    add_task(api, tmp_path, "a", layout, rows=6, seed=4)
    return app, api


def test_counters_move_as_the_load_did(served):
    app, api = served
    before = _samples(api)
    task = "/v1/tasks/{task_id}"
    for _ in range(3):
        assert api.get("/v1/tasks/a").status_code == 200
    assert api.get("/v1/tasks/nope").status_code == 404
    assert api.get("/v1/no/such/route").status_code == 404
    anonymous = TestClient(api.app)
    assert anonymous.get("/v1/tasks/a").status_code == 401
    r = api.post("/v1/tasks/a/bases", json={"kind": "task", "rank": 3})
    assert r.status_code == 202
    assert run_jobs(app) == [r.json()["id"]]
    manifest = api.get("/v1/tasks/a/bases/task").json()
    layer = manifest["layers"][0]
    body = api.get(layer["url"]).content
    after = _samples(api)

    def moved(name, **labels):
        return _value(after, name, **labels) - _value(before, name, **labels)

    requests = "tinysub_http_requests_total"
    assert moved(requests, method="GET", route=task, status="200") == 3
    assert moved(requests, method="GET", route=task, status="404") == 1
    assert moved(requests, method="GET", route=task, status="401") == 1
    assert moved(requests, method="GET", route="<unmatched>", status="404") == 1
    assert moved("tinysub_http_request_duration_seconds_count", method="GET", route=task) == 5
    assert moved("tinysub_auth_failures_total", status="401") == 1
    layer_route = "/v1/tasks/{task_id}/bases/{kind}/versions/{version}/layers/{layer}"
    assert moved("tinysub_http_response_bytes_total", route=layer_route) == len(body)
    assert len(body) == layer["nbytes"]
    assert moved("tinysub_job_duration_seconds_count", kind="task", status="succeeded") == 1
    assert _value(after, "tinysub_jobs", status="succeeded") == 1
    assert _value(after, "tinysub_jobs", status="pending") == 0


def test_upload_bytes_are_counted(served, layout):
    app, api = served
    assert api.post("/v1/tasks", json={"id": "up", "model": "tiny", "layout": layout.to_dict()})
    assert api.post("/v1/tasks/up/trajectory", json={}).status_code == 201
    group = layout.groups[0]
    part = b"\0" * 4 * group.size
    r = api.put(f"/v1/tasks/up/trajectory/rows/0/groups/{group.name}", content=part)
    assert r.status_code in (200, 201), r.text
    route = "/v1/tasks/{task_id}/trajectory/rows/{row}/groups/{group}"
    assert _value(_samples(api), "tinysub_http_request_bytes_total", route=route) == len(part)


def test_metrics_need_a_token(served):
    _, api = served
    anonymous = TestClient(api.app)
    assert anonymous.get("/v1/metrics").status_code == 401


def test_every_response_carries_a_request_id(served):
    _, api = served
    fresh = api.get("/v1/health").headers["x-request-id"]
    assert len(fresh) == 32 and fresh != api.get("/v1/health").headers["x-request-id"]
    assert api.get("/v1/health", headers={"X-Request-ID": "trace-42"}).headers["x-request-id"] == (
        "trace-42"
    )
    # A caller's ID that could forge log lines is replaced, not echoed.
    bad = api.get("/v1/health", headers={"X-Request-ID": "a b\tinjected"})
    assert bad.headers["x-request-id"] != "a b\tinjected" and len(bad.headers["x-request-id"]) == 32
    assert api.get("/v1/tasks/nope").headers["x-request-id"]  # errors too


def test_json_lines_carry_the_request_id():
    record = logging.LogRecord("tinysub", logging.INFO, __file__, 1, "hello %s", ("x",), None)
    token = request_id.set("rid-7")
    try:
        RequestIdFilter().filter(record)
    finally:
        request_id.reset(token)
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "hello x" and line["request_id"] == "rid-7"
    assert line["level"] == "INFO"


@pytest.mark.integration
def test_a_real_server_logs_json_with_request_ids(tmp_path):
    server = LocalServer(tmp_path / "registry", {"TINYSUB_LOG_FORMAT": "json"}, log_level="info")
    with server:
        r = httpx.get(server.url + "/v1/health", headers={"X-Request-ID": "probe-1"})
        assert r.headers["x-request-id"] == "probe-1"
    lines = [json.loads(x) for x in server.log.read_text().splitlines() if x.startswith("{")]
    assert lines, server.log.read_text()[-2000:]
    access = [x for x in lines if x["request_id"] == "probe-1"]
    assert access and "/v1/health" in access[0]["message"]
