"""Fuzz the registry from its own OpenAPI document (schemathesis, in-process over ASGI).

Every operation gets valid and invalid inputs generated from the schema; every response must be
free of 5xx, carry a status the operation documents, and match the documented schema (error
bodies included). The app holds real data (a task with a ready basis, an upload store with a
row) so that generated requests reach past "not found". Bounded: FUZZ_EXAMPLES cases per
operation and mode (15; TINYSUB_FUZZ_EXAMPLES=100 for a longer hunt), about 15 s in all.
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

FUZZ_EXAMPLES = int(os.environ.get("TINYSUB_FUZZ_EXAMPLES", "15"))
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
    layout = small_layout()
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
                out.append(pytest.param(path, method.upper(), mode, id=f"{method.upper()} "
                                        f"{path} {mode.value}"))  # fmt: skip
    return out


@pytest.fixture(scope="module")
def fuzz_schema(fuzzed):
    return schemathesis.openapi.from_asgi("/openapi.json", fuzzed[0])


@pytest.mark.parametrize(("path", "method", "mode"), _operations())
def test_api_conforms_to_its_schema(path, method, mode, fuzz_schema, fuzzed):
    """positive: inputs the schema allows; negative: inputs it forbids (which must be 4xx)."""
    app, token = fuzzed

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
        case.call_and_validate(headers=auth(token), checks=CHECKS)

    check()
