"""The basis benchmark's own machinery: its reference, its accuracy measures, one small run."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "basis.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_basis", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def small(bench, tmp_path_factory):
    """A (6, 3000) trajectory with its cached reference."""
    cache = tmp_path_factory.mktemp("bench")
    paths = bench._paths(cache, 6, 3000, 0, 1024)
    bench.write_trajectory(paths["w"], 6, 3000, 0)
    bench.write_reference(paths["w"], paths["ref"])
    return np.load(paths["w"]), np.load(paths["ref"])


def test_trajectory_has_the_promised_spectrum(bench, small):
    w, _ = small
    assert w.dtype == np.float32 and w.shape == (6, 3000)
    s = np.linalg.svd(w.astype(np.float64), compute_uv=False)
    # Gaussian rows are orthogonal only approximately: within a few sqrt(t / D).
    np.testing.assert_allclose(s, bench.spectrum(6), rtol=0.2)
    assert s[0] / s[-1] > 0.5 * bench.CONDITION


def test_reference_is_the_float64_svd(small):
    w, ref = small
    u, s, _ = np.linalg.svd(w.astype(np.float64), full_matrices=False)
    np.testing.assert_allclose(ref["s"], s, rtol=1e-12)
    assert np.abs(np.abs(ref["u"].T @ u) - np.eye(6)).max() < 1e-10


def test_evaluate_measures_angles_and_orthogonality(bench, small):
    w, ref = small
    _, _, vt = np.linalg.svd(w.astype(np.float64), full_matrices=False)
    v = vt.T * np.array([1, -1, 1, -1, 1, -1])  # signs must not matter
    angle, orth = bench.evaluate(v, w, ref["u"], ref["s"])
    assert angle < 1e-9 and orth < 1e-12
    theta = 1e-4  # rotate vectors 2 and 3 into each other by a known angle
    c, s_ = np.cos(theta), np.sin(theta)
    turned = v.copy()
    turned[:, 2], turned[:, 3] = c * v[:, 2] + s_ * v[:, 3], -s_ * v[:, 2] + c * v[:, 3]
    angle, orth = bench.evaluate(turned, w, ref["u"], ref["s"])
    assert angle == pytest.approx(theta, rel=1e-6) and orth < 1e-12
    angle, orth = bench.evaluate(1.001 * v, w, ref["u"], ref["s"])
    assert angle < 1e-9 and orth == pytest.approx(2e-3, rel=1e-2)


def test_a_small_run_writes_the_promised_rows(bench, tmp_path):
    out = tmp_path / "rows.json"
    argv = ["--t", "5", "--D", "4000", "--methods", "tinysub", "tinysub-store", "floor"]
    argv += ["--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--chunk-cols", "1024"]
    assert bench.main(argv) == 0
    rows = json.loads(out.read_text())
    assert [r["method"] for r in rows] == ["tinysub", "tinysub-store", "floor"]
    keys = {"method", "t", "D", "seconds", "peak_rss_mb", "max_angle_rad", "orth_err"}
    for r in rows:
        assert keys <= set(r) and (r["t"], r["D"]) == (5, 4000)
        assert r["seconds"] > 0 and r["peak_rss_mb"] is not None
    for r in rows[:2]:
        assert r["max_angle_rad"] < 1e-5 and r["orth_err"] < 1e-5
    assert rows[2]["max_angle_rad"] is None and rows[2]["orth_err"] is None
