"""The scaling study's machinery: the cost-model fit, the 7B projection, one tiny local run."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def report():
    return _load("scaling_report")


def _synthetic(a, b, c, w, k=8):
    cases = []
    for t, d, layers in [(16, 10**6, 1), (32, 10**6, 1), (64, 10**6, 1), (128, 10**6, 1),
                         (32, 4 * 10**6, 1), (32, 10**6, 4)]:  # fmt: skip
        v, n = (t + 1) * d * layers, d * layers
        cases.append({
            "study": "D" if d > 10**6 else "t", "label": f"{t}-{d}-{layers}", "kind": "task",
            "executor": "local", "storage": "disk", "t": t, "D": d, "layers": layers,
            "phases": {"gram": 0.3 + a * v + b * 2 * t * t * n, "project": c * v + w * k * n},
        })  # fmt: skip
    return {"rank": k, "cases": cases}


def test_fit_recovers_the_cost_model(report):
    truth = {"a": 5e-9, "b": 1e-10, "c": 8e-9, "w": 2e-9}
    model = report.fit(_synthetic(**truth))
    assert model["f"] == pytest.approx(0.3) and model["g"] == pytest.approx(0, abs=1e-9)
    for name, value in truth.items():
        assert model[name] == pytest.approx(value, rel=1e-6), name
    assert model["gram_rel_err"] < 1e-6 and model["project_rel_err"] < 1e-6


def test_projection_scales_down_with_workers_until_io_or_scheduling_binds(report):
    model = {"a": 5e-9, "b": 1e-10, "c": 8e-9, "w": 2e-9}
    rows = report.project_7b(model, workers=(1, 2, 4, 1 << 20))
    one, two = rows[0]["total_h"], rows[1]["total_h"]
    assert two == pytest.approx(one / 2)  # compute-bound: linear speed-up
    # With a million workers the floor is the scheduler: tasks x overhead per pass.
    floor = 7e9 / (1 << 18) * 0.002 * 2 / 3600
    assert rows[-1]["total_h"] == pytest.approx(floor, rel=0.01)


@pytest.mark.slow
def test_tiny_local_run(tmp_path, report):
    out = tmp_path / "scaling.json"
    done = subprocess.run(
        [sys.executable, str(BENCH / "scaling.py"), "--tiny", "--repeat", "1", "--studies",
         "t,layers", "--no-s3", "--cache-dir", str(tmp_path / "cache"), "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads(out.read_text())
    cases = {c["label"]: c for c in doc["cases"]}
    assert [c["rows"] for c in doc["cases"] if c["study"] == "t"] == [8, 16]
    assert cases["L=2 t=16"]["bytes_read"] == 2 * cases["L=1 t=16"]["bytes_read"]
    assert all(c["seconds"] > 0 and c["peak_driver_mb"] >= 0 for c in doc["cases"])
    paths = report.plot(doc, tmp_path)
    assert {p.name for p in paths} == {"scaling_t.png", "scaling_layers.png"}
