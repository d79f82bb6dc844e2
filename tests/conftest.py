"""Shared fixtures: tiny layouts and synthetic trajectories with known spectra; and the hooks
that fail the run when a test of a promised component (PostgreSQL, S3, Dask, Ray) is skipped,
unless TINYSUB_ALLOW_SKIPS allows it (tests/promised.py)."""

from __future__ import annotations

import os

# No test may reach the Hugging Face Hub (CI has no internet, and a lookup that waits on an
# unreachable network hangs the suite). Any Hub request that slips through goes to a closed
# loopback port and fails at once, as a connection error, like an offline machine; set before
# huggingface_hub is first imported, since it reads the endpoint then.
os.environ.setdefault("HF_ENDPOINT", "http://127.0.0.1:9")

import numpy as np
import pytest

from storage.layout import build_layout
from storage.trajectory import TrajectoryStore
from tests.promised import (  # noqa: F401 (hooks, found here by name)
    pytest_configure,
    pytest_runtest_makereport,
    pytest_terminal_summary,
)
from tests.xdist_scheduling import make_scheduler


def pytest_xdist_make_scheduler(config, log):
    """`--dist loadfile` that cannot deadlock after a worker dies (tests/xdist_scheduling.py)."""
    return make_scheduler(config, log)


@pytest.fixture
def tiny_layout():
    return build_layout(
        [
            ("encoder.layer.0.attention.weight", (40, 30)),
            ("encoder.layer.0.attention.bias", (30,)),
            ("encoder.layer.1.attention.weight", (20, 20)),
            ("encoder.layer.1.attention.bias", (20,)),
        ]
    )


def make_trajectory(layout, t: int, seed: int = 0, scale: float = 0.01):
    """theta0 plus t-1 random-walk checkpoints, one dict of group vectors per row."""
    rng = np.random.default_rng(seed)
    theta = {g.name: rng.standard_normal(g.size).astype(np.float32) for g in layout.groups}
    rows = [dict(theta)]
    for _ in range(t - 1):
        theta = {
            k: (v + scale * rng.standard_normal(v.size)).astype(np.float32)
            for k, v in theta.items()
        }
        rows.append(theta)
    return rows


@pytest.fixture
def tiny_store(tmp_path, tiny_layout):
    store = TrajectoryStore.create(
        tmp_path / "traj", tiny_layout, model_name="tiny", chunk_cols=256
    )
    for i, row in enumerate(make_trajectory(tiny_layout, 8)):
        store.append(row, step=10 * i, epoch=i)
    return store


HEAVY_MARKERS = ("integration", "slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Files with an integration or slow test run first, each file's tests kept together and in
    order. `make test` spreads whole files over two processes (pytest-xdist, --dist loadfile):
    starting the long end-to-end files first keeps one of them from being the last thing left
    running on one core while the other core idles."""
    heavy = {
        item.path for item in items if any(item.get_closest_marker(name) for name in HEAVY_MARKERS)
    }
    items.sort(key=lambda item: item.path not in heavy)  # stable: file order is kept
