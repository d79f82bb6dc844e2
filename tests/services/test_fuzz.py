"""Fuzz the registry from its own OpenAPI document (schemathesis, in-process over ASGI).

Every operation gets valid and invalid inputs generated from the schema; every response must be
free of 5xx, carry a status the operation documents, and match the documented schema (error
bodies included). The app holds real data (a task with a ready basis, an upload store with a
row) so that generated requests reach past "not found": every operation with path parameters
runs twice, once with generated paths (wide) and once with the paths of that data (deep: the
query, headers and body are still generated), and a deep run must reach past 404. Bounded:
FUZZ_EXAMPLES cases per operation, mode and depth (15; TINYSUB_FUZZ_EXAMPLES=100 for a longer
hunt), about 30 s in all. `pytest -m fuzz` runs only these.
"""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode, checks
from sqlalchemy import update

from services.models import Token
from tests.services.helpers import add_task, api_client, auth, make_app, small_layout, token_for

pytestmark = pytest.mark.fuzz

FUZZ_EXAMPLES = int(os.environ.get("TINYSUB_FUZZ_EXAMPLES", "15"))
# Path parameters of the seeded data (see _app): task "a" has a ready task basis v1 with the
# alias "prod", task "up" an upload store; job 1 and run 1 exist.
LAYOUT = small_layout()
KNOWN = {
    "task_id": "a",
    "kind": "task",
    "version": 1,
    "layer": LAYOUT.groups[0].name,
    "name": "prod",
    "job_id": 1,
    "run_id": 1,
    "row": 0,
    "group": LAYOUT.groups[0].name,
}
UPLOAD_PATHS = ("/rows/",)  # the row routes write to task "up"'s upload store
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
]


def _app(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    app = make_app(tmp, max_json_bytes=64 << 10, max_upload_bytes=64 << 10)
    api = api_client(app, "admin")
    layout = LAYOUT
    add_task(api, tmp, "a", layout, rows=6)
    api.post("/v1/tasks/a/bases", json={"kind": "task", "rank": 2})
    api.post("/v1/tasks/a/bases", json={"kind": "random", "rank": 2})
    app.state.runner.run_pending()
    api.put("/v1/tasks/a/bases/task/aliases/prod", json={"version": 1})
    api.post("/v1/tasks", json={"id": "up", "model": "tiny", "layout": layout.to_dict()})
    api.post("/v1/tasks/up/trajectory", json={})
    api.post("/v1/runs", json={"task_id": "a", "method": "full"})
    return app


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory):
    app = _app(tmp_path_factory)
    return app, token_for(app, "admin", name="fuzzer")


def _operations() -> list:
    """(path, method, mode) of every operation and generation mode, from the routes alone (no
    app, nothing created). Operations without inputs have no negative cases."""
    from fastapi import FastAPI

    from services.routes import api_router

    app = FastAPI()
    app.include_router(api_router())
    out = []
    for path, ops in app.openapi()["paths"].items():
        for method, op in ops.items():
            for mode in GenerationMode:
                if mode is GenerationMode.NEGATIVE and not (
                    op.get("parameters") or op.get("requestBody")
                ):
                    continue
                for deep in (False, True) if "{" in path else (False,):
                    name = f"{method.upper()} {path} {mode.value}{' deep' if deep else ''}"
                    out.append(pytest.param(path, method.upper(), mode, deep, id=name))
    return out


@pytest.fixture(scope="module")
def fuzz_schema(fuzzed):
    return schemathesis.openapi.from_asgi("/openapi.json", fuzzed[0])


def _known_paths(path: str, params: dict) -> dict:
    known = {**KNOWN, "task_id": "up"} if any(p in path for p in UPLOAD_PATHS) else KNOWN
    return {name: known.get(name, value) for name, value in params.items()}


@pytest.mark.parametrize(("path", "method", "mode", "deep"), _operations())
def test_api_conforms_to_its_schema(path, method, mode, deep, fuzz_schema, fuzzed):
    """positive: inputs the schema allows; negative: inputs it forbids (which must be 4xx).
    deep: the path names seeded data, so the rest of the request is what gets fuzzed."""
    app, token = fuzzed
    statuses = []

    @given(case=fuzz_schema[path][method].as_strategy(generation_mode=mode))
    @settings(
        max_examples=FUZZ_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def check(case):
        # The fuzzer may revoke any token id, ours included: keep ours alive for the next case.
        with app.state.registry.db.session() as s:
            s.execute(update(Token).where(Token.name == "fuzzer").values(revoked_at=None))
        if deep:
            case.path_parameters = _known_paths(path, case.path_parameters or {})
        response = case.call(headers=auth(token))
        statuses.append(response.status_code)
        case.validate_response(response, checks=CHECKS)

    check()
    if deep and mode is GenerationMode.POSITIVE:
        # The point of deep: requests got past the lookup of what the path names.
        assert any(code != 404 for code in statuses), f"every deep case was 404: {statuses}"
