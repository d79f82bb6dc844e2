"""The whole-model benchmark's machinery: page-cache eviction and one small run beside Spark."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "model.py"


def run_group(cmd: list[str], timeout: float) -> tuple[int, str]:
    """Run `cmd` in its own process group; on timeout kill the whole group. Spark's JVM is a
    grandchild that holds the pipes open: killing only the Python child would leave
    subprocess.run waiting for them for ever."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        _, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, stderr = proc.communicate()
        pytest.fail(f"{cmd[1]} ran past {timeout} s; its stderr ends:\n{stderr[-3000:]}")
    return proc.returncode, stderr


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_model", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_eviction_empties_the_page_cache_and_warming_fills_it(bench, tmp_path):
    (tmp_path / "a").write_bytes(os.urandom(1 << 20))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b").write_bytes(os.urandom(3 << 20))
    bench.warm(str(tmp_path))
    assert bench.resident_fraction(str(tmp_path)) == pytest.approx(1.0)
    bench.evict(str(tmp_path))
    # A page another process maps or reads at that moment may stay; nearly all must go.
    assert bench.resident_fraction(str(tmp_path)) < 0.1


@pytest.mark.slow
@pytest.mark.parametrize("system", ["tinysub-local", "spark"])
def test_a_small_run_writes_the_promised_rows(system, tmp_path):
    if system == "spark" and shutil.which("java") is None:
        pytest.skip("no `java` on PATH: Spark needs a JVM (.ci/run installs default-jre-headless)")
    out = tmp_path / "model.json"
    # tinysub: a cold and a warm row, each from its own process, whose bytes must agree.
    caches = ["cold", "warm"] if system == "tinysub-local" else ["warm"]
    code, stderr = run_group(
        [sys.executable, str(SCRIPT), "--layers", "2", "--D", "3000", "--t", "6",
         "--workers", "2", "--spark-memory", "1g", "--systems", system,
         *(["--warm"] if caches == ["warm"] else []),
         "--cache-dir", str(tmp_path / "cache"), "--out", str(out)],
        timeout=300,
    )  # fmt: skip
    assert code == 0, stderr[-3000:]
    doc = json.loads(out.read_text())
    rows = doc["rows"]
    assert [(r["system"], r["cache"]) for r in rows] == [(system.split("-")[0], c) for c in caches]
    keys = {"system", "executor", "layers", "t", "D", "seconds", "gb_per_s", "peak_rss_mb",
            "max_angle_rad", "first_call_seconds", "best_seconds", "repeat", "cache"}  # fmt: skip
    for r in rows:
        assert keys <= set(r), keys - set(r)
        assert (r["layers"], r["t"], r["D"], r["repeat"]) == (2, 6, 3000, 1)
        assert r["seconds"] == r["best_seconds"] == r["first_call_seconds"] > 0
        assert r["max_angle_rad"] <= 1e-5 and r["orth_err"] <= 1e-5
        assert r["peak_rss_mb"] > 0 and len(r["layer_sha256"]) == 2
        resident = 1.0 if r["cache"] == "warm" else 0.0
        assert r["resident_fraction"] == [pytest.approx(resident, abs=0.1)]
    assert doc["machine"]["cpus"] == os.cpu_count()
    if system == "spark":
        parts = ("load_seconds", "svd_seconds", "collect_seconds", "save_seconds")
        assert sum(rows[0][k] for k in parts) == pytest.approx(rows[0]["seconds"], rel=0.05)
        assert doc["identical_across_executors"] is None  # no tinysub rows to compare
    else:
        assert rows[0]["layer_sha256"] == rows[1]["layer_sha256"]
        assert doc["identical_across_executors"] is True
