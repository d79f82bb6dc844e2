"""benchmarks/finetune.py: one tiny run of its rows (the figures themselves are the script's
output, never asserted on: speed is a benchmark's business, not a unit test's)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "finetune.py"


@pytest.mark.slow
def test_tiny_rows_have_the_promised_fields(tmp_path):
    out = tmp_path / "ft.json"
    cmd = [sys.executable, str(SCRIPT), "--tiny", "--models", "tiny-gpt2"]
    cmd += ["--methods", "full", "intrinsic"]
    cmd += ["--steps", "1", "--repeat", "1", "--out", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600)
    rows = json.loads(out.read_text())["rows"]
    assert {(r["model"], r["method"]) for r in rows} == {
        ("tiny-gpt2", "full"),
        ("tiny-gpt2", "intrinsic"),
    }
    for r in rows:
        assert {"model", "method", "dim", "seconds_per_step", "peak_rss_mb"} <= set(r)
        assert r["seconds_per_step"] > 0 and r["first_step_seconds"] > 0
    intrinsic = [r for r in rows if r["method"] == "intrinsic"]
    full = {r["model"]: r for r in rows if r["method"] == "full"}
    # theta (h x k per layer) replaces the layers' weights among the trainable parameters
    assert all(r["dim"] == 32 and r["trainable"] < full[r["model"]]["trainable"] for r in intrinsic)
