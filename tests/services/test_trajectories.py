"""Trajectories: registration confined to allowed roots; uploads validated, staged, resumable,
idempotent, and committed only when whole."""

from __future__ import annotations

import hashlib
import os
from unittest import mock

import numpy as np
import pytest

from storage.layout import build_layout
from storage.trajectory import TrajectoryStore
from tests.conftest import make_trajectory
from tests.services.helpers import add_task, api_client, make_app, write_store
from tests.storage.test_row_index import counting_reads


def _create(api, layout, task_id="t"):
    r = api.post("/v1/tasks", json={"id": task_id, "model": "tiny", "layout": layout.to_dict()})
    assert r.status_code == 201


def _put(api, task, row, group, values, offset=0, **headers):
    data = np.ascontiguousarray(values, dtype="<f4").tobytes()
    return api.put(
        f"/v1/tasks/{task}/trajectory/rows/{row}/groups/{group}",
        params={"offset": offset},
        content=data,
        headers={"Content-Type": "application/octet-stream", **headers},
    )


def _send_row(api, task, row, vectors, parts=3, commit=True):
    for g, vec in vectors.items():
        step = -(-vec.size // parts)
        for a in range(0, vec.size, step):
            r = _put(api, task, row, g, vec[a : a + step], offset=a)
            assert r.status_code == 200, r.text
    if commit:
        r = api.post(f"/v1/tasks/{task}/trajectory/rows/{row}/commit", json={"step": row})
        assert r.status_code == 200, r.text
        return r.json()


def test_register_store_checks_layout(api, tmp_path, layout):
    store = add_task(api, tmp_path, "t", layout, rows=5)
    info = api.get("/v1/tasks/t/trajectory").json()
    assert info["rows"] == 5 and info["source"] == "registered"
    assert info["row_sha256"] == [r.sha256 for r in store.rows]
    # Registering the same store again is idempotent; another store is a conflict.
    assert api.post("/v1/tasks/t/trajectory", json={"url": store.url}).status_code == 201
    other = write_store(tmp_path, "other", layout)
    assert api.post("/v1/tasks/t/trajectory", json={"url": other.url}).status_code == 409
    # A store of another layout does not fit a task.
    wrong = build_layout([("encoder.layer.0.w", (7,))])
    _create(api, wrong, "w")
    r = api.post("/v1/tasks/w/trajectory", json={"url": other.url})
    assert r.status_code == 422 and r.json()["code"] == "layout_mismatch"


@pytest.mark.parametrize(
    "url",
    [
        "/etc",
        "{stores}/../registry",
        "{stores}/t/../../outside",
        "relative/path",
        "file:///etc",
        "memory://bucket/x",
        "s3://bucket/x",
        "{stores}/t\x00",
    ],
)
def test_register_refuses_urls_outside_allowed_roots(api, tmp_path, layout, url):
    _create(api, layout)
    url = url.format(stores=tmp_path / "stores")
    r = api.post("/v1/tasks/t/trajectory", json={"url": url})
    assert r.status_code in (403, 422), r.text
    assert api.get("/v1/tasks/t/trajectory").status_code == 404


def test_symlink_out_of_the_root_is_refused(api, tmp_path, layout):
    _create(api, layout)
    outside = write_store(tmp_path / "elsewhere", "x", layout)
    (tmp_path / "stores").mkdir(exist_ok=True)
    link = tmp_path / "stores" / "link"
    os.symlink(outside.url, link)
    r = api.post("/v1/tasks/t/trajectory", json={"url": str(link)})
    assert r.status_code == 403


def test_upload_rows_in_parts_equals_local_store(api, layout, tmp_path):
    _create(api, layout)
    assert api.post("/v1/tasks/t/trajectory", json={"chunk_cols": 1024}).status_code == 201
    rows = make_trajectory(layout, 4, seed=3)
    for i, row in enumerate(rows):
        info = _send_row(api, "t", i, row)
        assert info["index"] == i and info["step"] == i
    traj = api.get("/v1/tasks/t/trajectory").json()
    assert traj["rows"] == 4 and traj["staged"] == {}
    store = TrajectoryStore.open(traj["url"])
    for i, row in enumerate(rows):
        for g, vec in row.items():
            np.testing.assert_array_equal(store.read_row(i, g), vec)


def test_same_part_twice_is_accepted_once_and_different_bytes_conflict(api, layout):
    _create(api, layout)
    api.post("/v1/tasks/t/trajectory", json={})
    rows = make_trajectory(layout, 2, seed=1)
    _send_row(api, "t", 0, rows[0], commit=False)
    # Staged: same bytes accepted, other bytes refused, overlapping parts refused.
    g = layout.group_names[0]
    first = rows[0][g][:410]
    assert _put(api, "t", 0, g, first).json()["status"] == "staged"
    assert _put(api, "t", 0, g, first + 1).status_code == 409
    assert _put(api, "t", 0, g, first[:5], offset=3).status_code == 409
    api.post("/v1/tasks/t/trajectory/rows/0/commit", json={})
    # Committed: same bytes -> 200 'committed', different -> 409, and the commit is idempotent.
    assert _put(api, "t", 0, g, first).json()["status"] == "committed"
    r = _put(api, "t", 0, g, first * 2)
    assert r.status_code == 409 and r.json()["code"] == "conflict"
    assert api.post("/v1/tasks/t/trajectory/rows/0/commit", json={}).status_code == 200
    assert api.get("/v1/tasks/t/trajectory").json()["rows"] == 1


def test_row_commits_only_when_every_group_is_complete(api, layout):
    _create(api, layout)
    api.post("/v1/tasks/t/trajectory", json={})
    row = make_trajectory(layout, 1)[0]
    g0, g1 = layout.group_names
    _put(api, "t", 0, g0, row[g0])
    _put(api, "t", 0, g1, row[g1][:100])
    r = api.post("/v1/tasks/t/trajectory/rows/0/commit", json={})
    assert r.status_code == 409 and g1 in r.json()["detail"]
    staged = api.get("/v1/tasks/t/trajectory").json()["staged"]
    assert staged == {"0": {g0: [[0, layout.group(g0).size]], g1: [[0, 100]]}}
    assert api.get("/v1/tasks/t/trajectory").json()["rows"] == 0
    _put(api, "t", 0, g1, row[g1][100:], offset=100)
    assert api.post("/v1/tasks/t/trajectory/rows/0/commit", json={}).status_code == 200
    # Rows commit in order.
    r = api.post("/v1/tasks/t/trajectory/rows/2/commit", json={})
    assert r.status_code == 422


@pytest.mark.parametrize(
    "case", ["nan", "inf", "odd_bytes", "past_end", "unknown_group", "empty", "bad_sha", "far_row"]
)
def test_bad_parts_are_refused_and_nothing_is_staged(api, layout, case):
    _create(api, layout)
    api.post("/v1/tasks/t/trajectory", json={})
    g = layout.group_names[1]
    vec = np.ones(10, dtype=np.float32)
    url = f"/v1/tasks/t/trajectory/rows/0/groups/{g}"
    kw: dict = {"params": {"offset": 0}, "content": vec.tobytes()}
    if case == "nan":
        vec[3] = np.nan
        kw["content"] = vec.tobytes()
    elif case == "inf":
        vec[0] = np.inf
        kw["content"] = vec.tobytes()
    elif case == "odd_bytes":
        kw["content"] = b"\x00" * 7
    elif case == "past_end":
        kw["params"] = {"offset": layout.group(g).size - 5}
    elif case == "unknown_group":
        url = "/v1/tasks/t/trajectory/rows/0/groups/layer.9"
    elif case == "empty":
        kw["content"] = b""
    elif case == "bad_sha":
        kw["headers"] = {"X-Tinysub-Sha256": hashlib.sha256(b"other").hexdigest()}
    elif case == "far_row":
        url = f"/v1/tasks/t/trajectory/rows/500/groups/{g}"
    r = api.put(url, **kw)
    assert r.status_code == 422, r.text
    assert api.get("/v1/tasks/t/trajectory").json()["staged"] == {}


def test_oversized_part_is_413(tmp_path, layout):
    app = make_app(tmp_path, max_upload_bytes=1024)
    api = api_client(app)
    _create(api, layout)
    api.post("/v1/tasks/t/trajectory", json={})
    r = _put(api, "t", 0, layout.group_names[0], np.zeros(300))
    assert r.status_code == 413 and r.json()["code"] == "payload_too_large"
    assert _put(api, "t", 0, layout.group_names[0], np.zeros(256)).status_code == 200


def test_registered_store_is_not_written_through_the_registry(api, tmp_path, layout):
    add_task(api, tmp_path, "t", layout, rows=2)
    r = _put(api, "t", 2, layout.group_names[0], np.zeros(4))
    assert r.status_code == 409 and r.json()["code"] == "read_only"


def test_drop_staged_row(api, layout):
    _create(api, layout)
    api.post("/v1/tasks/t/trajectory", json={})
    g = layout.group_names[0]
    _put(api, "t", 0, g, np.ones(8))
    assert api.delete("/v1/tasks/t/trajectory/rows/0").status_code == 204
    assert api.get("/v1/tasks/t/trajectory").json()["staged"] == {}
    assert _put(api, "t", 0, g, np.zeros(8)).status_code == 200


def test_staged_parts_come_with_their_sha256(api, tmp_path, layout):
    """What an interrupted upload resumes from: a staged row's parts and the sha256 of the
    bytes the registry holds (the client sends only the others)."""
    _create(api, layout)
    api.post("/v1/tasks/t/trajectory", json={})
    row = make_trajectory(layout, 1, seed=2)[0]
    g0, g1 = layout.group_names
    _put(api, "t", 0, g0, row[g0][:100])
    _put(api, "t", 0, g0, row[g0][100:300], offset=100)
    _put(api, "t", 0, g1, row[g1][:7])

    def sha(values) -> str:
        return hashlib.sha256(np.ascontiguousarray(values, "<f4").tobytes()).hexdigest()

    r = api.get("/v1/tasks/t/trajectory/rows/0/parts")
    assert r.status_code == 200
    assert r.json() == {
        "row": 0,
        "groups": {
            g0: [
                {"offset": 0, "count": 100, "sha256": sha(row[g0][:100])},
                {"offset": 100, "count": 200, "sha256": sha(row[g0][100:300])},
            ],
            g1: [{"offset": 0, "count": 7, "sha256": sha(row[g1][:7])}],
        },
    }
    assert api.get("/v1/tasks/t/trajectory/rows/1/parts").json() == {"row": 1, "groups": {}}
    api.delete("/v1/tasks/t/trajectory/rows/0")
    assert api.get("/v1/tasks/t/trajectory/rows/0/parts").json()["groups"] == {}
    # A registered store takes no uploads and has no staged parts; no trajectory is a 404.
    add_task(api, tmp_path, "reg", layout, rows=2)
    assert api.get("/v1/tasks/reg/trajectory/rows/0/parts").json()["groups"] == {}
    _create(api, layout, "bare")
    assert api.get("/v1/tasks/bare/trajectory/rows/0/parts").status_code == 404


# ------------------------------------------------------------- issue 12, finding 10: pages
def test_get_trajectory_pages_the_row_hashes(api, tmp_path, layout):
    store = add_task(api, tmp_path, "t", layout, rows=7)
    hashes = [r.sha256 for r in store.rows]
    first = api.get("/v1/tasks/t/trajectory", params={"limit": 3}).json()
    assert first["row_sha256"] == hashes[:3]
    page = (first["rows"], first["total"], first["offset"], first["limit"], first["next_offset"])
    assert page == (7, 7, 0, 3, 3)
    last = api.get("/v1/tasks/t/trajectory", params={"offset": 6, "limit": 3}).json()
    assert last["row_sha256"] == hashes[6:] and last["next_offset"] is None
    past = api.get("/v1/tasks/t/trajectory", params={"offset": 9}).json()
    assert past["row_sha256"] == [] and past["next_offset"] is None and past["rows"] == 7
    default = api.get("/v1/tasks/t/trajectory").json()
    assert default["limit"] == 50 and default["row_sha256"] == hashes
    walked, offset = [], 0
    while offset is not None:
        got = api.get("/v1/tasks/t/trajectory", params={"offset": offset, "limit": 2}).json()
        walked, offset = walked + got["row_sha256"], got["next_offset"]
    assert walked == hashes


@pytest.mark.parametrize(
    ("params", "name"),
    [({"offset": -1}, "offset"), ({"limit": 0}, "limit"), ({"limit": 501}, "limit")]
    + [({"limit": "all"}, "limit")],
)
def test_a_bad_page_is_422_naming_the_parameter(api, tmp_path, layout, params, name):
    add_task(api, tmp_path, "t", layout, rows=2)
    r = api.get("/v1/tasks/t/trajectory", params=params)
    assert r.status_code == 422, r.text
    assert r.json()["code"] == "invalid_input"
    assert r.json()["message"].startswith(f"query.{name}:"), r.json()["message"]


def test_get_and_part_upload_read_as_much_for_many_rows_as_for_few(api, layout):
    _create(api, layout)
    url = api.post("/v1/tasks/t/trajectory", json={}).json()["url"]
    writer = TrajectoryStore.open(url, read_only=False)
    rows, g = make_trajectory(layout, 150, seed=2), layout.group_names[1]

    def append(upto: int) -> None:
        with mock.patch.object(os, "fsync", lambda fd: None):  # reads are counted, not fsyncs
            while writer.num_rows < upto:
                writer.append(rows[writer.num_rows])

    def reads() -> dict:
        with counting_reads() as counts:
            assert api.get("/v1/tasks/t/trajectory", params={"limit": 10}).status_code == 200
            assert _put(api, "t", writer.num_rows, g, np.ones(8)).json()["status"] == "staged"
        api.delete(f"/v1/tasks/t/trajectory/rows/{writer.num_rows}")
        return dict(counts)

    # 66 rows span two row index segments (64 rows each): in both cases the page is one
    # segment and opening reads the last, so only the row count differs.
    append(66)
    few = reads()
    append(150)
    assert reads() == few
