"""The client's retries against scripted failures (httpx.MockTransport): backoff bounds,
Retry-After, which requests are retried, the error once retries run out, and resumed
downloads and uploads."""

from __future__ import annotations

import hashlib
import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import numpy as np
import pytest

from client import Client
from client.errors import retry_after
from client.retry import RetriesExhausted, RetryPolicy, retryable
from storage.errors import Conflict, StorageError, TinysubError
from tests.services.helpers import write_store


class Script:
    """A fake registry: answers from a list of planned outcomes, then `default`."""

    def __init__(self, *plan, default=None):
        self.plan = list(plan)
        self.default = default or (lambda request: httpx.Response(200, json={"status": "ok"}))
        self.seen: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        step = self.plan.pop(0) if self.plan else self.default
        if isinstance(step, Exception):
            raise step
        return step(request) if callable(step) else step


def _client(script, tmp_path, **policy) -> tuple[Client, list[float]]:
    sleeps: list[float] = []
    retries = RetryPolicy(sleep=sleeps.append, **policy)
    http = httpx.Client(transport=httpx.MockTransport(script))
    return Client("http://reg", http=http, cache_dir=tmp_path, retries=retries), sleeps


def _unavailable(after: str | None = None) -> httpx.Response:
    headers = {"Retry-After": after} if after is not None else {}
    return httpx.Response(503, json={"code": "storage_error", "message": "busy"}, headers=headers)


# ------------------------------------------------------------------------------- policy
def test_backoff_is_full_jitter_within_growing_bounds(tmp_path):
    random.seed(3)
    script = Script(*[httpx.ReadError("cut")] * 6)
    c, sleeps = _client(script, tmp_path, attempts=7, backoff=0.5, max_backoff=4.0)
    assert c.health() == {"status": "ok"}
    assert len(script.seen) == 7 and len(sleeps) == 6
    windows = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]  # 0.5 * 2^(n-1), capped at max_backoff
    assert [RetryPolicy(backoff=0.5, max_backoff=4.0).window(n) for n in range(1, 7)] == windows
    assert all(0 <= s <= w for s, w in zip(sleeps, windows, strict=True)), sleeps
    # Jitter: the waits are spread, not the bounds themselves.
    assert len({round(s, 6) for s in sleeps}) == 6 and sleeps != windows


def test_retry_after_is_waited_in_full_plus_jitter(tmp_path):
    script = Script(_unavailable("3"), _unavailable("0"), httpx.Response(429, headers={}))
    c, sleeps = _client(script, tmp_path, backoff=0.01)
    assert c.health() == {"status": "ok"}
    assert len(script.seen) == 4
    assert 3.0 <= sleeps[0] <= 3.01 and all(s <= 0.04 for s in sleeps[1:]), sleeps


def test_retry_after_as_an_http_date():
    when = datetime.now(UTC) + timedelta(seconds=30)
    assert 25 < retry_after(format_datetime(when, usegmt=True)) <= 30
    assert retry_after("7") == 7.0
    assert retry_after(None) is None and retry_after("soon") is None


def test_retry_after_past_the_deadline_gives_up_at_once(tmp_path):
    script = Script(_unavailable("3600"))
    c, sleeps = _client(script, tmp_path, deadline=60)
    with pytest.raises(RetriesExhausted, match="asked to wait 3600 s") as info:
        c.health()
    assert sleeps == [] and len(script.seen) == 1 and info.value.attempts == 1


def test_only_transient_failures_are_retried(tmp_path):
    # A 4xx is an answer, not a failure of the network: raised at once.
    script = Script(httpx.Response(409, json={"code": "conflict", "message": "no"}))
    c, sleeps = _client(script, tmp_path)
    with pytest.raises(Conflict):
        c.health()
    assert len(script.seen) == 1 and sleeps == []
    # A 500 is a bug in the registry: retrying would not help.
    script = Script(httpx.Response(500, json={"code": "tinysub_error", "message": "bug"}))
    c, _ = _client(script, tmp_path)
    with pytest.raises(TinysubError):
        c.health()
    assert len(script.seen) == 1


@pytest.mark.parametrize(
    "failure",
    [
        httpx.ReadError("connection reset mid-body"),
        httpx.RemoteProtocolError("peer closed connection"),
        httpx.ReadTimeout("no answer"),
        _unavailable("0"),
    ],
)
def test_a_basis_order_is_not_sent_twice(tmp_path, failure):
    """POST orders are not idempotent: after a failure that may have reached the registry,
    the error is raised as it came, and the order is not repeated."""
    job = {"id": 1, "status": "pending", "basis": {"task_id": "t", "kind": "task", "version": 1}}
    script = Script(failure, default=httpx.Response(202, json=job))
    c, sleeps = _client(script, tmp_path)
    with pytest.raises((httpx.TransportError, StorageError)) as info:
        c.compute_basis("t", "task", rank=2)
    assert not isinstance(info.value, RetriesExhausted)
    assert "was not sent again" in info.value.__notes__[0]
    assert len(script.seen) == 1 and sleeps == []


def test_a_basis_order_that_never_left_is_sent_again(tmp_path):
    job = {"id": 1, "status": "pending", "basis": {"task_id": "t", "kind": "task", "version": 1}}
    script = Script(httpx.ConnectError("refused"), default=httpx.Response(202, json=job))
    c, _ = _client(script, tmp_path)
    assert c.compute_basis("t", "task", rank=2).id == 1
    assert len(script.seen) == 2


def test_retryable_by_method_and_status():
    s = RetryPolicy().statuses
    cut = httpx.ReadError("cut")
    assert retryable(cut, idempotent=True, statuses=s)
    assert not retryable(cut, idempotent=False, statuses=s)
    assert retryable(httpx.ConnectError("refused"), idempotent=False, statuses=s)
    busy = StorageError("busy")
    busy.status_code = 503
    assert retryable(busy, idempotent=True, statuses=s)
    assert not retryable(busy, idempotent=False, statuses=s)
    assert not retryable(ValueError("bug"), idempotent=True, statuses=s)


def test_a_clear_error_once_retries_run_out(tmp_path):
    script = Script(default=_unavailable("0"))
    c, sleeps = _client(script, tmp_path, attempts=4, backoff=0.01)
    with pytest.raises(RetriesExhausted) as info:
        c.get_task("t")
    err = info.value
    assert len(script.seen) == 4 and len(sleeps) == 3 and err.attempts == 4
    assert "GET /v1/tasks/t failed 4 times" in str(err)
    assert "HTTP 503: busy" in str(err) and "try again later" in str(err)
    # Callers that caught the network's errors, or tinysub's, still catch it.
    assert isinstance(err, httpx.TransportError) and isinstance(err, TinysubError)
    assert isinstance(err.__cause__, StorageError) and err.last is err.__cause__


def test_no_retries_raises_the_error_as_it_came(tmp_path):
    script = Script(httpx.ReadError("cut"))
    http = httpx.Client(transport=httpx.MockTransport(script))
    c = Client("http://reg", http=http, cache_dir=tmp_path, retries=0)
    with pytest.raises(httpx.ReadError):
        c.health()
    assert c.retry.attempts == 1
    with Client("http://reg", retries=3) as other:
        assert other.retry.attempts == 4
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)


# ------------------------------------------------------------------------------ downloads
LAYER = np.random.default_rng(0).standard_normal(3000).astype("<f4").tobytes()
SHA = hashlib.sha256(LAYER).hexdigest()
MANIFEST = {
    "task_id": "t",
    "kind": "task",
    "version": 1,
    "layers": [
        {
            "name": "w",
            "shape": [3000, 1],
            "dtype": "float32",
            "nbytes": len(LAYER),
            "sha256": SHA,
            "url": "/v1/tasks/t/bases/task/versions/1/layers/w",
        }
    ],
}


class LayerServer:
    """Serves MANIFEST and LAYER with Range and If-Range like the registry; the first
    `cuts` layer responses break after `cut_after` bytes."""

    def __init__(self, cuts: int, cut_after: int = 1000, data: bytes = LAYER):
        self.cuts, self.cut_after, self.data = cuts, cut_after, data
        self.ranges: list[tuple[str | None, str | None]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if "/layers/" not in request.url.path:
            return httpx.Response(200, json=MANIFEST, headers={"ETag": '"m"'})
        rng, if_range = request.headers.get("range"), request.headers.get("if-range")
        self.ranges.append((rng, if_range))
        etag = f'"{hashlib.sha256(self.data).hexdigest()}"'
        start = int(rng[6:-1]) if rng and if_range == etag else 0
        body = self.data[start:]
        headers = {"ETag": etag, "Content-Length": str(len(body))}
        status = 206 if start else 200
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(self.data) - 1}/{len(self.data)}"
        if self.cuts:
            self.cuts -= 1
            return httpx.Response(status, headers=headers, stream=_Cut(body, self.cut_after))
        return httpx.Response(status, headers=headers, content=body)


class _Cut(httpx.SyncByteStream):
    def __init__(self, body: bytes, after: int):
        self.body, self.after = body, after

    def __iter__(self):
        yield self.body[: self.after]
        raise httpx.ReadError("connection reset by peer")


def test_a_cut_download_resumes_from_its_last_verified_byte(tmp_path):
    server = LayerServer(cuts=4, cut_after=1000)
    # 2 tries per stretch without progress: each cut brought new bytes, so 4 cuts pass.
    c, sleeps = _client(server, tmp_path, attempts=2, backoff=0.01)
    pulled = c.pull_basis("t", "task")
    assert pulled.files["w"].read_bytes() == LAYER
    assert server.ranges == [
        (None, None),
        ("bytes=1000-", f'"{SHA}"'),
        ("bytes=2000-", f'"{SHA}"'),
        ("bytes=3000-", f'"{SHA}"'),
        ("bytes=4000-", f'"{SHA}"'),
    ]
    assert len(sleeps) == 4


def test_a_download_without_progress_gives_up_and_keeps_its_bytes(tmp_path):
    server = LayerServer(cuts=10, cut_after=0)
    c, _ = _client(server, tmp_path, attempts=3, backoff=0.01)
    with pytest.raises(RetriesExhausted, match="pull again to resume") as info:
        c.pull_basis("t", "task")
    assert info.value.attempts == 3 and len(server.ranges) == 3
    # Later, with bytes kept from a cut: the next pull asks only for the rest.
    server = LayerServer(cuts=1, cut_after=5000)
    c, _ = _client(server, tmp_path, attempts=1)
    with pytest.raises(httpx.ReadError):
        c.pull_basis("t", "task")
    c, _ = _client(server, tmp_path)
    assert c.pull_basis("t", "task").files["w"].read_bytes() == LAYER
    assert server.ranges[-1] == ("bytes=5000-", f'"{SHA}"')


def test_a_changed_layer_starts_over_instead_of_splicing(tmp_path):
    """If-Range: the partial file holds the start of another layer (the same sha256 name, but
    the server's bytes have another ETag): the server answers 200 with the whole layer and the
    partial bytes are dropped, never spliced."""
    partial = tmp_path / "blobs" / f"{SHA}.incomplete"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"\x00" * 5000)  # not LAYER's first bytes
    other = bytes(reversed(LAYER))
    server = LayerServer(cuts=0, data=other)
    c, _ = _client(server, tmp_path)
    # The server ignored the range (another ETag): the answer is `other` whole, whose sha256
    # is not the manifest's, so nothing is cached.
    with pytest.raises(StorageError, match="wrong size or sha256"):
        c.pull_basis("t", "task")
    assert server.ranges == [("bytes=5000-", f'"{SHA}"')]
    assert not partial.exists() and not (tmp_path / "blobs" / SHA).exists()


# -------------------------------------------------------------------------------- uploads
def _failing_after(http: httpx.Client, puts: int) -> dict:
    """Make every PUT after the first `puts` fail as a connection reset."""
    seen = {"n": 0, "on": True}

    def hook(request: httpx.Request) -> None:
        if request.method == "PUT":
            seen["n"] += 1
            if seen["on"] and seen["n"] > puts:
                raise httpx.WriteError("connection reset by peer")

    http.event_hooks["request"] = [*http.event_hooks["request"], hook]
    return seen


def test_a_stopped_upload_resumes_from_its_last_acknowledged_part(client, tmp_path, layout):
    local = write_store(tmp_path / "local", "a", layout, rows=3, seed=5)
    client.create_task("a", model="tiny", layout=layout)
    part_bytes = 1024
    parts = sum(-(-4 * g.size // part_bytes) for g in layout.groups)  # per row
    seen = _failing_after(client._http, parts + 3)  # row 0 whole, 3 parts of row 1
    client.retry = RetryPolicy(attempts=3, backoff=0.0)
    with pytest.raises(RetriesExhausted, match="run the same upload again") as info:
        client.upload_trajectory("a", local.url, part_bytes=part_bytes)
    assert "rows before 1 are committed" in str(info.value)
    assert client.trajectory("a")["rows"] == 1
    staged = client.request_json("GET", "/v1/tasks/a/trajectory/rows/1/parts")["groups"]
    assert sum(len(p) for p in staged.values()) == 3
    # Again, with the network back: only the parts the registry does not hold are sent.
    seen["on"], seen["n"] = False, 0
    client.requests.clear()
    status = client.upload_trajectory("a", local.url, part_bytes=part_bytes)
    assert status["row_sha256"] == [r.sha256 for r in local.rows] and status["staged"] == {}
    assert seen["n"] == 2 * parts - 3
    assert not any(m == "DELETE" for m, _, _ in client.requests)


def test_staged_parts_with_other_bytes_are_dropped_and_sent_again(client, tmp_path, layout):
    local = write_store(tmp_path / "local", "a", layout, rows=1, seed=5)
    client.create_task("a", model="tiny", layout=layout)
    client.request_json("POST", "/v1/tasks/a/trajectory", json={})
    g = layout.groups[0]
    other = np.full(256, 7.0, "<f4").tobytes()  # our first part's cut, not its bytes
    client.request(
        "PUT", f"/v1/tasks/a/trajectory/rows/0/groups/{g.name}", params={"offset": 0},
        content=other, headers={"Content-Type": "application/octet-stream"},
    )  # fmt: skip
    parts = client.request_json("GET", "/v1/tasks/a/trajectory/rows/0/parts")["groups"]
    assert parts == {
        g.name: [{"offset": 0, "count": 256, "sha256": hashlib.sha256(other).hexdigest()}]
    }
    client.requests.clear()
    status = client.upload_trajectory("a", local.url, part_bytes=1024)
    assert status["row_sha256"] == [r.sha256 for r in local.rows]
    assert ("DELETE", "/v1/tasks/a/trajectory/rows/0") in [(m, p) for m, p, _ in client.requests]
