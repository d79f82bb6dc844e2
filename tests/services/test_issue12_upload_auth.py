"""Issue 12, finding 1: request bodies are not read before the token is checked, upload parts are
spooled to a temporary file (not held in memory), and concurrent uploads are bounded.

The app is driven at the ASGI level so that the test sees exactly how many body bytes it pulled
from `receive`, in the 64 KiB messages a real server delivers.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pytest

from storage.layout import build_layout
from tests.services.helpers import api_client, make_app, small_layout, token_for

CHUNK = 64 << 10  # what uvicorn hands the app per message
SMALL_BOUND = CHUNK  # bytes an app may pull before it answers 401/403
VALUES = {
    "task_id": "up",
    "row": "1",
    "group": "layer.0",
    "kind": "task",
    "name": "prod",
    "job_id": "1",
    "token_id": "1",
    "run_id": "1",
    "version": "1",
    "layer": "layer.0",
}
PUT_PART = ("PUT", "/v1/tasks/up/trajectory/rows/1/groups/layer.0")
# Every operation that takes a body today; the tests run on whatever the OpenAPI document lists,
# and this list makes sure none of them silently dropped out of it.
BODY_ROUTES = {
    ("POST", "/v1/tokens"),
    ("POST", "/v1/tasks"),
    ("POST", "/v1/tasks/up/trajectory"),
    PUT_PART,
    ("POST", "/v1/tasks/up/trajectory/rows/1/commit"),
    ("POST", "/v1/tasks/up/bases"),
    ("PUT", "/v1/tasks/up/bases/task/aliases/prod"),
    ("POST", "/v1/recompute"),
    ("POST", "/v1/runs"),
}


def body_routes(app) -> set[tuple[str, str]]:
    """(method, concrete path) of every operation whose OpenAPI entry has a request body."""
    out = set()
    for template, ops in app.openapi()["paths"].items():
        for method, op in ops.items():
            if isinstance(op, dict) and "requestBody" in op:
                out.add((method.upper(), template.format(**VALUES)))
    return out


@dataclass
class Sent:
    """What one ASGI request did: status, headers, body, and the body bytes the app pulled."""

    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    consumed: int = 0
    started: asyncio.Event = field(default_factory=asyncio.Event)

    def json(self) -> dict:
        return json.loads(self.body)


async def asgi(
    app,
    method: str,
    path: str,
    chunks: Iterator[bytes],
    headers: dict[str, str] | None = None,
    *,
    hold: asyncio.Event | None = None,
    out: Sent | None = None,
) -> Sent:
    """Send one request to `app` with its body in `chunks`; after the first chunk, wait for
    `hold` (an upload that stays in flight). Counts the body bytes the app pulled."""
    out = out or Sent()
    done = asyncio.Event()
    finished = False
    path, _, query = path.partition("?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query.encode(),
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }

    async def receive() -> dict:
        nonlocal finished
        if finished:  # asked again after the whole body: the client waits for its answer
            await done.wait()
            return {"type": "http.disconnect"}
        if out.consumed and hold is not None:
            await hold.wait()
        out.started.set()
        chunk = next(chunks, None)
        if chunk is None:
            finished = True
            return {"type": "http.request", "body": b"", "more_body": False}
        out.consumed += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            out.status = message["status"]
            out.headers = {k.decode().lower(): v.decode() for k, v in message["headers"]}
        elif message["type"] == "http.response.body":
            out.body += message.get("body", b"")
            if not message.get("more_body"):
                done.set()

    await app(scope, receive, send)
    return out


def chunked(total: int, chunk: bytes | None = None) -> Iterator[bytes]:
    """`total` bytes in CHUNK-sized messages (the same object each time: no allocation here)."""
    piece = chunk if chunk is not None else b"\0" * CHUNK
    sent = 0
    while sent < total:
        n = min(len(piece), total - sent)
        yield piece if n == len(piece) else piece[:n]
        sent += n


def json_chunks(total: int) -> Iterator[bytes]:
    """A valid JSON document of `total` bytes, in CHUNK-sized messages."""
    raw = b'{"pad": "' + b"x" * (total - 11) + b'"}'
    view = memoryview(raw)
    for a in range(0, len(raw), CHUNK):
        yield bytes(view[a : a + CHUNK])


@pytest.fixture
def world(tmp_path):
    """A registry with an upload task `up` (small layout, its store created)."""
    app = make_app(tmp_path, max_concurrent_uploads=2)
    api = api_client(app, "admin")
    layout = small_layout()
    r = api.post("/v1/tasks", json={"id": "up", "model": "tiny", "layout": layout.to_dict()})
    assert r.status_code == 201, r.text
    assert api.post("/v1/tasks/up/trajectory", json={}).status_code == 201
    return app, api, tmp_path


# ------------------------------------------------------------------------------ auth first
def test_every_body_route_is_listed(world):
    app, _api, _tmp = world
    assert body_routes(app) >= BODY_ROUTES


@pytest.mark.parametrize("who", ["no token", "forged token", "read token"])
def test_no_body_is_read_before_the_token_is_checked(world, who):
    """A 32 MiB part or a 1 MiB JSON body without a valid token (or with too small a scope) is
    answered 401/403 having pulled at most one message of it."""
    app, _api, _tmp = world
    settings = app.state.registry.settings
    headers = {
        "no token": {},
        "forged token": {"Authorization": "Bearer tsk_forged"},
        "read token": {"Authorization": f"Bearer {token_for(app, 'read', name='reader')}"},
    }[who]
    expect = 403 if who == "read token" else 401
    consumed = {}
    for method, path in sorted(body_routes(app)):
        if (method, path) == PUT_PART:
            size, body = 32 << 20, chunked(32 << 20)
            kind = "application/octet-stream"
        else:
            size, body = settings.max_json_bytes - 1, json_chunks(settings.max_json_bytes - 1)
            kind = "application/json"
        hdrs = {**headers, "Content-Type": kind, "Content-Length": str(size)}
        sent = asyncio.run(asgi(app, method, path, body, hdrs))
        assert sent.status == expect, (method, path, sent.status, sent.body[:300])
        assert set(sent.json()) == {"code", "message", "detail"}
        if expect == 401:
            assert sent.headers.get("www-authenticate") == "Bearer"
        consumed[(method, path)] = sent.consumed
    print(who, "body bytes consumed before the error:", consumed)
    assert all(n <= SMALL_BOUND for n in consumed.values()), consumed


# ----------------------------------------------------------------------- spooled to a file
BIG = build_layout([("encoder.layer.0.attention.weight", (4096, 2048))])  # 8 Mi values, 32 MiB


def test_a_part_is_spooled_to_a_file_not_held_in_memory(tmp_path, monkeypatch):
    """A 32 MiB part arrives in 64 KiB messages: it is written to a temporary file in
    `upload_spool_dir` as it arrives, staged from there, and Python's peak allocation while it is
    received and staged stays far below its size."""
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    app = make_app(tmp_path, upload_spool_dir=spool_dir)
    api = api_client(app, "admin")
    r = api.post("/v1/tasks", json={"id": "big", "model": "m", "layout": BIG.to_dict()})
    assert r.status_code == 201, r.text
    assert api.post("/v1/tasks/big/trajectory", json={}).status_code == 201
    group = BIG.groups[0]
    size = 4 * group.size
    assert size == 32 << 20

    spooled: list[str] = []
    real = tempfile.NamedTemporaryFile

    def kept_temporary_file(*args, **kwargs):  # the same file, kept after close to be looked at
        f = real(*args, **{**kwargs, "delete": False})
        spooled.append(f.name)
        return f

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", kept_temporary_file)
    piece = np.full(CHUNK // 4, 0.25, dtype="<f4").tobytes()
    headers = {
        "Authorization": api.headers["Authorization"],
        "Content-Type": "application/octet-stream",
        "Content-Length": str(size),
    }
    path = f"/v1/tasks/big/trajectory/rows/0/groups/{group.name}?offset=0"
    tracemalloc.start()
    try:
        sent = asyncio.run(asgi(app, "PUT", path, chunked(size, piece), headers))
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        monkeypatch.setattr(tempfile, "NamedTemporaryFile", real)
    assert sent.status == 200, sent.body
    assert sent.json()["status"] == "staged" and sent.json()["count"] == group.size
    print(
        f"peak Python allocation while a {size >> 20} MiB part was staged: {peak / 2**20:.2f} MiB"
    )
    assert peak < size / 8, f"peak {peak} bytes for a {size}-byte part"
    assert len(spooled) == 1 and os.path.dirname(spooled[0]) == str(spool_dir)
    assert os.path.getsize(spooled[0]) == size
    os.unlink(spooled[0])
    staged = api.get("/v1/tasks/big/trajectory").json()["staged"]
    assert staged == {"0": {group.name: [[0, group.size]]}}


# ------------------------------------------------------------------- concurrent uploads
def _part(layout, group: str, start: int, stop: int) -> bytes:
    values = np.arange(start, stop, dtype="<f4") / 1000.0
    assert stop <= layout.group(group).size
    return values.tobytes()


def test_uploads_beyond_the_bound_get_503_with_retry_after(world):
    """With max_concurrent_uploads=2 and two parts in flight, a third is refused at once (503,
    Retry-After, the standard error body); the two finish, and their slots are free again."""
    app, api, _tmp = world
    layout = small_layout()
    token = api.headers["Authorization"]

    def put(offset: int, data: bytes, hold=None, out=None):
        headers = {"Authorization": token, "Content-Length": str(len(data))}
        path = f"/v1/tasks/up/trajectory/rows/0/groups/layer.0?offset={offset}"
        return asgi(app, "PUT", path, iter([data[:8], data[8:]]), headers, hold=hold, out=out)

    async def scenario() -> tuple[list[Sent], Sent, Sent]:
        hold = asyncio.Event()
        sents = [Sent(), Sent()]
        held = [
            asyncio.ensure_future(put(0, _part(layout, "layer.0", 0, 600), hold, sents[0])),
            asyncio.ensure_future(put(600, _part(layout, "layer.0", 600, 1200), hold, sents[1])),
        ]
        await asyncio.wait_for(asyncio.gather(*(s.started.wait() for s in sents)), timeout=30)
        third = await asyncio.wait_for(put(1200, _part(layout, "layer.0", 1200, 1230)), 30)
        hold.set()
        done = [await asyncio.wait_for(t, 30) for t in held]
        again = await put(1200, _part(layout, "layer.0", 1200, 1230))
        return done, third, again

    done, third, again = asyncio.run(scenario())
    assert third.status == 503, (third.status, third.body)
    assert int(third.headers["retry-after"]) >= 1
    body = third.json()
    assert (
        set(body) == {"code", "message", "detail"} and "max_concurrent_uploads" in body["message"]
    )
    assert third.consumed == 0
    assert [d.status for d in done] == [200, 200], [d.body for d in done]
    assert again.status == 200, again.body


def test_failed_uploads_give_their_slot_back(tmp_path):
    """A part refused for its content (NaN) or its size (413 while it is read) frees its slot."""
    app = make_app(tmp_path, max_concurrent_uploads=1, max_upload_bytes=16 << 10)
    api = api_client(app, "admin")
    body = {"id": "up", "model": "tiny", "layout": small_layout().to_dict()}
    assert api.post("/v1/tasks", json=body).status_code == 201
    assert api.post("/v1/tasks/up/trajectory", json={}).status_code == 201
    url = "/v1/tasks/up/trajectory/rows/0/groups/layer.1"
    nan = np.array([1.0, np.nan], dtype="<f4").tobytes()
    for _ in range(3):
        assert api.put(url, content=nan).status_code == 422

        def too_big():  # no Content-Length: stopped while it is read
            for _ in range(20):
                yield b"\0" * 1024

        assert api.put(url, content=too_big()).status_code == 413
    ok = api.put(url, content=np.ones(420, dtype="<f4").tobytes())
    assert ok.status_code == 200, ok.text
