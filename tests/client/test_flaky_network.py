"""Transfers that survive the network: a real `tinysub serve` behind a loopback proxy that cuts
1 connection in 5 partway (request or response body, FIN or RST) and answers 503 to 1 request
in 10. Every pull of a 64 MiB layer and every row upload completes with the right sha256, with
no rerun by hand: the client retries with backoff, resumes layers from their last verified byte
and uploads from their last acknowledged part."""

from __future__ import annotations

import hashlib
import shutil
import threading
import time

import numpy as np
import pytest

from client import Client
from client.retry import RetryPolicy
from services.local import LocalServer
from storage.arrays import digest, encode
from storage.layout import build_layout
from storage.trajectory import TrajectoryStore
from tests.flaky_proxy import FlakyProxy

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

PULLS, UPLOADS = 20, 20
BIG = [
    ("encoder.layer.0.w", (4096, 4096))
]  # one group of 16 Mi values: a rank-1 layer of 64 MiB float32
ROWS = [("encoder.layer.0.w", (1024, 1024)), ("encoder.layer.1.w", (1024,))]  # 4 MiB a row
# More tries than the default (a third of all requests fail here) and short waits, so that the
# test's few hundred failures do not add minutes of sleeping.
FLAKY = RetryPolicy(attempts=10, backoff=0.05, max_backoff=1.0)


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    root = tmp_path_factory.mktemp("flaky")
    server = LocalServer(root / "registry", {"TINYSUB_JOB_POLL_SECONDS": "0.05"})
    token = server.admin_token()
    server.start()
    try:
        yield server, token, root
    finally:
        server.stop()


def test_pulls_and_uploads_through_a_flaky_proxy(registry):
    server, token, root = registry
    direct = Client(server.url, token=token, cache_dir=root / "direct-cache")
    direct.create_task("big", model="flaky", layout=build_layout(BIG))
    t0 = time.monotonic()
    job = direct.compute_basis("big", "random", rank=1)
    assert job.wait(timeout=300).status == "succeeded", job.data
    timings = {"basis": time.monotonic() - t0}
    info = direct.basis("big", "random")["layers"][0]
    assert info["nbytes"] == 64 << 20

    layout = build_layout(ROWS)
    rng = np.random.default_rng(0)
    rows = [
        {g.name: rng.standard_normal(g.size).astype("<f4") for g in layout.groups}
        for _ in range(UPLOADS)
    ]
    with FlakyProxy(("127.0.0.1", server.port), cut=0.2, unavailable=0.1, seed=16) as proxy:
        t0 = time.monotonic()
        for i in range(PULLS):
            cache = root / f"cache-{i}"  # a fresh cache: every pull fetches the whole layer
            with Client(proxy.url, token=token, cache_dir=cache, retries=FLAKY) as c:
                pulled = c.pull_basis("big", "random")
                assert _sha256(pulled.files[info["name"]]) == info["sha256"]
            shutil.rmtree(cache)
        timings["pulls"] = time.monotonic() - t0

        t0 = time.monotonic()
        with Client(proxy.url, token=token, cache_dir=root / "up-cache", retries=FLAKY) as c:
            c.create_task("up", model="flaky", layout=layout)
            for i in range(UPLOADS):  # one upload per row: each starts, resumes and ends anew
                status = c.upload_trajectory("up", rows[: i + 1], part_bytes=1 << 20)
                assert status["rows"] == i + 1 and status["staged"] == {}
        timings["uploads"] = time.monotonic() - t0
        counts = dict(proxy.counts)

    want = [{g: digest(encode(v, "float32")) for g, v in row.items()} for row in rows]
    assert direct.trajectory("up")["row_sha256"] == want
    remote = TrajectoryStore.open(direct.trajectory("up")["url"])
    for g in layout.group_names:
        assert remote.read_block(g).tobytes() == np.stack([r[g] for r in rows]).tobytes()
    print(f"flaky proxy: {counts}; seconds: {timings}")
    # Not a vacuous pass: the proxy did break connections, mid-layer and mid-part included.
    cuts = counts.get("cut_request", 0) + counts.get("cut_response", 0)
    assert cuts >= 10 and counts.get("unavailable", 0) >= 5, counts
    assert counts.get("ranged_206", 0) >= 2 and counts.get("cut_request", 0) >= 2, counts
    assert counts.get("ranged_200", 0) == 0, counts  # resumed, never restarted


def test_too_many_uploads_at_once_wait_for_retry_after(tmp_path):
    """The registry refuses an upload part past max_concurrent_uploads with 503 and
    Retry-After: 1; the client waits and sends it again, and every upload completes."""
    server = LocalServer(tmp_path / "registry", {"TINYSUB_MAX_CONCURRENT_UPLOADS": "1"})
    token = server.admin_token()
    server.start()
    layout = build_layout(ROWS)
    refused: list[float] = []
    errors: list[BaseException] = []

    def upload(task_id: str, seed: int) -> None:
        rng = np.random.default_rng(seed)
        rows = [{g.name: rng.standard_normal(g.size).astype("<f4") for g in layout.groups}]
        slept = RetryPolicy(sleep=lambda s: (refused.append(s), time.sleep(s)))
        try:
            with Client(server.url, token=token, cache_dir=tmp_path, retries=slept) as c:
                status = c.upload_trajectory(task_id, rows * 3, part_bytes=256 << 10)
                assert status["rows"] == 3
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)

    try:
        with Client(server.url, token=token, cache_dir=tmp_path) as c:
            for i in range(4):
                c.create_task(f"u{i}", model="flaky", layout=layout)
        threads = [threading.Thread(target=upload, args=(f"u{i}", i)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
    finally:
        server.stop()
    assert errors == []
    print(f"parts refused with 503 and sent again: {len(refused)}")
    # Some parts were refused, and each wait honoured Retry-After: 1.
    assert refused and min(refused) >= 1.0, refused


def _sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
