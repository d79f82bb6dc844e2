"""The load run in short (5 s; the 60 s figures come from `python -m tests.reliability.load`):
16 pullers, 4 uploaders and 4 look-up clients at once against a real `tinysub serve` over
loopback: no 5xx, no transport error, every downloaded layer's sha256 right, every acknowledged
upload row stored with its sha256, and every kind of client served."""

from __future__ import annotations

import pytest

from services.local import LocalServer
from tests.reliability.load import ok, parser, run_load

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def test_short_load_run(tmp_path):
    args = parser().parse_args(["--seconds", "5", "--small", "--procs", "2"])
    args.layer_values, args.upload_values, args.part_bytes = 16_384, 4_096, 8 << 10
    server = LocalServer(tmp_path / "registry", {"TINYSUB_JOB_POLL_SECONDS": "0.1"})
    token = server.admin_token()
    with server:
        summary = run_load(server, token, args)
    assert ok(summary), summary
    assert summary["requests"] > 100 and summary["rows_acknowledged"] >= 4, summary
    # The server's memory stays bounded: layers are streamed, not held.
    assert summary["server_rss_MB"]["peak"] - summary["server_rss_MB"]["start"] < 200, summary
