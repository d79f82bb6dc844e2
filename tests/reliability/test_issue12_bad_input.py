"""Issue 12, finding 8: bad input is a 4xx with the standard body, never a 5xx, and no error body
shows where the server keeps its files.

Cases: Range headers with numbers too long for int() (Python refuses over 4,300 digits), group
names that collide with a store's own files (`zarr.json`, `tinysub.json`, `tinysub-basis.json`,
in any case), path-like group names, and errors whose message named the store root.
"""

from __future__ import annotations

import pathlib

import pytest
from fastapi.testclient import TestClient

from services.models import Task
from storage.layout import Layout
from tests.reliability import snapshots
from tests.services.helpers import add_task, auth, make_app, small_layout, token_for

RESERVED = ["zarr.json", "tinysub.json", "tinysub-basis.json", "ZARR.JSON", "Tinysub.Json"]
PATHLIKE = ["..", "a/b", "/abs", "../x", "a\\b", ".hidden"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A registered task `a` with a ready basis, and an upload task `up`."""
    tmp = tmp_path_factory.mktemp("issue12")
    app = make_app(tmp)
    # raise_server_exceptions=False: a 500 is an answer to look at, not an exception here.
    api = TestClient(app, headers=auth(token_for(app, "admin")), raise_server_exceptions=False)
    layout = small_layout()
    add_task(api, tmp, "a", layout, rows=6)
    assert api.post("/v1/tasks/a/bases", json={"kind": "task", "rank": 2}).status_code == 202
    app.state.runner.run_pending()
    for task_id in ("up", "gone"):
        body = {"id": task_id, "model": "tiny", "layout": layout.to_dict()}
        assert api.post("/v1/tasks", json=body).status_code == 201
        assert api.post(f"/v1/tasks/{task_id}/trajectory", json={}).status_code == 201
    return app, api, tmp


def _server_paths(app, tmp) -> list[str]:
    settings = app.state.registry.settings
    return [str(tmp), str(settings.data_dir.resolve()), settings.resolved_store_root]


def _check_error(world, r, expect: tuple[int, ...]) -> dict:
    """A 4xx in `expect`, the standard body, and no absolute path of the server in it."""
    app, _api, tmp = world
    assert r.status_code in expect, (r.status_code, r.text[:500])
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"code", "message", "detail"} and body["message"]
    for path in _server_paths(app, tmp):
        assert path not in r.text, (path, r.text[:500])
    return body


# ------------------------------------------------------------------------------- ranges
@pytest.mark.parametrize("digits", [4300, 4301, 10_000])
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_range_with_a_huge_number_is_never_a_server_error(world, digits, method):
    _app, api, _tmp = world
    info = api.get("/v1/tasks/a/bases/task?version=1").json()["layers"][1]
    size, huge = info["nbytes"], "9" * digits
    full = api.get(info["url"]).content
    # A first byte past the end: not satisfiable.
    r = api.request(method, info["url"], headers={"Range": f"bytes={huge}-"})
    assert r.status_code == 416, (r.status_code, r.text[:300])
    assert r.headers["content-range"] == f"bytes */{size}"
    if method == "GET":
        body = _check_error(world, r, (416,))
        assert body["code"] == "range_not_satisfiable" and len(body["message"]) < 300
    # A last byte or a suffix longer than the layer: the whole layer, as RFC 9110 says.
    for header in (f"bytes=0-{huge}", f"bytes=-{huge}", f"bytes=0{huge}-{huge}"):
        r = api.request(method, info["url"], headers={"Range": header})
        if header.startswith("bytes=0-") or header.startswith("bytes=-"):
            assert r.status_code == 206, (header[:20], r.status_code, r.text[:300])
            assert r.headers["content-range"] == f"bytes 0-{size - 1}/{size}"
            assert method == "HEAD" or r.content == full
        else:
            assert r.status_code == 416, (header[:20], r.status_code, r.text[:300])


def test_leading_zeros_do_not_make_a_number_huge(world):
    _app, api, _tmp = world
    info = api.get("/v1/tasks/a/bases/task?version=1").json()["layers"][1]
    full = api.get(info["url"]).content
    r = api.get(info["url"], headers={"Range": "bytes=" + "0" * 5000 + "4-" + "0" * 5000 + "7"})
    assert r.status_code == 206 and r.content == full[4:8]


# -------------------------------------------------------------------------- group names
@pytest.mark.parametrize("name", RESERVED + PATHLIKE)
def test_group_names_that_are_store_files_or_paths_are_refused(world, name):
    app, api, tmp = world
    doc = small_layout().to_dict()
    doc["groups"][0]["name"] = name
    doc.pop("hash")
    before = snapshots.registry(app, tmp / "stores")
    task_id = f"g{(RESERVED + PATHLIKE).index(name)}"  # one each: a case that got in stays
    r = api.post("/v1/tasks", json={"id": task_id, "model": "m", "layout": doc})
    body = _check_error(world, r, (422,))
    assert body["code"] == "invalid_input"
    assert snapshots.registry(app, tmp / "stores") == before


@pytest.mark.parametrize("name", ["zarr.json", "tinysub.json"])
def test_a_stored_task_with_such_a_group_cannot_create_a_store(world, name):
    """A task stored before the check (its layout is in the database) gets a 422 for its upload
    store, not a 500 that shows the store root."""
    app, api, _tmp = world
    doc = small_layout().to_dict()
    doc["groups"][0]["name"] = name
    doc.pop("hash")
    layout = Layout.from_dict(doc)
    task_id = "old-" + name.split(".")[0]
    with app.state.registry.db.session() as s:
        s.add(Task(id=task_id, model="m", layout_hash=layout.hash, layout=layout.to_dict()))
    r = api.post(f"/v1/tasks/{task_id}/trajectory", json={})
    assert _check_error(world, r, (422,))["code"] == "invalid_input"


@pytest.mark.parametrize(
    "group", ["zarr.json", "tinysub.json", "%2e%2e", "a%2Fb", "..%2F..%2Fregistry", "_rows"]
)
def test_group_names_in_upload_paths(world, group):
    app, api, tmp = world
    before = snapshots.registry(app, tmp / "stores")
    for method, path, kw in [
        ("PUT", f"/v1/tasks/up/trajectory/rows/0/groups/{group}", {"content": b"\0" * 8}),
        ("PUT", f"/v1/tasks/a/trajectory/rows/6/groups/{group}", {"content": b"\0" * 8}),
        ("GET", f"/v1/tasks/a/bases/task/versions/1/layers/{group}", {}),
    ]:
        _check_error(world, api.request(method, path, **kw), (404, 409, 422))
    assert snapshots.registry(app, tmp / "stores") == before


# ---------------------------------------------------------------- no server paths at all
def test_errors_about_stored_trajectories_do_not_show_the_store_root(world):
    """The upload store lives under the store root: a conflict about it names the task, not
    the directory."""
    _app, api, tmp = world
    r = api.post("/v1/tasks/up/trajectory", json={"url": str(tmp / "stores" / "a")})
    body = _check_error(world, r, (409,))
    assert "up" in body["message"]


def test_storage_messages_name_no_server_path(world):
    """The storage layer names the files it fails on; the error body says `<store>` instead of
    the store root (the server log keeps the whole path)."""
    app, api, _tmp = world
    store = app.state.registry.trajectory_url("gone")
    (pathlib.Path(store) / "tinysub.json").unlink()
    r = api.get("/v1/tasks/gone/trajectory")
    body = _check_error(world, r, (404,))
    assert "<store>/trajectories/gone" in body["message"], body
