"""Registry test helpers: an app on a temp dir, tokens, tasks with small real trajectories."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from services.app import create_app
from services.security import create_token
from services.settings import Settings
from storage.layout import Layout, build_layout
from storage.trajectory import TrajectoryStore
from tests.conftest import make_trajectory


def small_layout() -> Layout:
    # Two layers of 1,230 and 420 values, as in tests/conftest.py's tiny_layout.
    return build_layout(
        [
            ("encoder.layer.0.attention.weight", (40, 30)),
            ("encoder.layer.0.attention.bias", (30,)),
            ("encoder.layer.1.attention.weight", (20, 20)),
            ("encoder.layer.1.attention.bias", (20,)),
        ]
    )


def make_settings(tmp_path: Path, **kw) -> Settings:
    base = dict(
        data_dir=tmp_path / "registry",
        trusted_store_prefixes=[str(tmp_path / "stores")],
        run_jobs=False,
        job_poll_seconds=0.05,
    )
    base.update(kw)
    return Settings(**base)


def make_app(tmp_path: Path, **kw):
    return create_app(make_settings(tmp_path, **kw))


def token_for(app, *scopes: str, name: str = "test") -> str:
    with app.state.registry.db.session() as s:
        _, plain = create_token(s, name, scopes)
    return plain


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def api_client(app, *scopes: str) -> TestClient:
    return TestClient(app, headers=auth(token_for(app, *(scopes or ("admin",)))))


def write_store(
    tmp_path: Path, name: str, layout: Layout, rows: int = 8, seed: int = 0, chunk_cols: int = 256
) -> TrajectoryStore:
    store = TrajectoryStore.create(
        tmp_path / "stores" / name, layout, model_name="tiny", chunk_cols=chunk_cols
    )
    for i, row in enumerate(make_trajectory(layout, rows, seed=seed)):
        store.append(row, step=10 * i, epoch=float(i), metrics={"loss": 1.0 / (i + 1)})
    return store


def add_task(
    api: TestClient, tmp_path: Path, task_id: str, layout: Layout, **kw
) -> TrajectoryStore:
    """Create the task and register a fresh store of `rows` random-walk checkpoints."""
    store = write_store(tmp_path, task_id, layout, **kw)
    r = api.post("/v1/tasks", json={"id": task_id, "model": "tiny", "layout": layout.to_dict()})
    assert r.status_code in (200, 201), r.text
    r = api.post(f"/v1/tasks/{task_id}/trajectory", json={"url": store.url})
    assert r.status_code == 201, r.text
    return store


def run_jobs(app) -> list[int]:
    return app.state.runner.run_pending()


def layer_bytes(api: TestClient, manifest: dict) -> dict[str, bytes]:
    out = {}
    for info in manifest["layers"]:
        r = api.get(info["url"])
        assert r.status_code == 200, r.text
        out[info["name"]] = r.content
    return out
