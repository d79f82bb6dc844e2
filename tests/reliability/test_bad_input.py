"""Hostile and broken input: each case is a clear 4xx (or a one-line CLI error) and writes
nothing. "Nothing" is checked, not assumed: every database row and every file under the data
dir and the trusted store prefix are the same before and after each request."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from storage.basis import BasisStore
from storage.errors import InvalidInput, LayoutMismatch
from storage.layout import build_layout, layout_from_model
from storage.trajectory import TrajectoryStore
from tests.conftest import make_trajectory
from tests.reliability import snapshots
from tests.services.helpers import add_task, auth, make_app, token_for, write_store
from tinysub.cli.main import run
from worker.svd.bases import task_basis

UNICODE_TRICKS = [
    "ｔａｓｋ",  # fullwidth: NFKC-folds to "task"
    "\u212aelvin",  # KELVIN SIGN, folds to "Kelvin"
    "ta\u0455k",  # Cyrillic dze, looks like "s"
    "ab\u202ecd",  # right-to-left override
    "ab\u200bcd",  # zero-width space
    "ab\u00adcd",  # soft hyphen
    "a\ufeffb",  # zero-width no-break space (BOM)
    "task\u0301",  # combining accent
]
CONTROL = ["a\x00b", "a\nb", "a\rb", "a\tb", "a\x1bb", "a\x7fb"]
PATHLIKE = ["..", ".", "a/b", "../a", "a\\b", "/a", "~", "a..b", "%2e%2e", "a b", "A", ""]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A registry with a registered task (6 rows, a ready basis), an upload task with one
    committed row, an empty upload task, a pending basis, and another model's store."""
    tmp = tmp_path_factory.mktemp("bad")
    app = make_app(tmp, max_json_bytes=64 << 10, max_upload_bytes=16 << 10)
    api = TestClient(app, headers=auth(token_for(app, "admin")))
    layout = build_layout(
        [
            ("encoder.layer.0.attention.weight", (40, 30)),
            ("encoder.layer.0.attention.bias", (30,)),
            ("encoder.layer.1.attention.weight", (20, 20)),
            ("encoder.layer.1.attention.bias", (20,)),
        ]
    )
    add_task(api, tmp, "a", layout, rows=6)
    assert api.post("/v1/tasks/a/bases", json={"kind": "task", "rank": 2}).status_code == 202
    app.state.runner.run_pending()
    assert api.post("/v1/tasks/a/bases", json={"kind": "task", "rank": 3}).status_code == 202
    for tid in ("up", "empty"):
        body = {"id": tid, "model": "tiny", "layout": layout.to_dict()}
        assert api.post("/v1/tasks", json=body).status_code == 201
        assert api.post(f"/v1/tasks/{tid}/trajectory", json={}).status_code == 201
    row0 = make_trajectory(layout, 1, seed=9)[0]
    for g in layout.groups:
        data = np.asarray(row0[g.name], "<f4").tobytes()
        r = api.put(f"/v1/tasks/up/trajectory/rows/0/groups/{g.name}", content=data)
        assert r.status_code == 200, r.text
    assert api.post("/v1/tasks/up/trajectory/rows/0/commit", json={}).status_code == 200
    other = build_layout([("encoder.layer.0.w", (41, 30)), ("encoder.layer.1.w", (20, 20))])
    write_store(tmp, "other-model", other, rows=4)
    other_task = {"id": "b", "model": "other", "layout": other.to_dict()}
    assert api.post("/v1/tasks", json=other_task).status_code == 201
    add_task(api, tmp, "b2", other, rows=4)
    return app, api, layout, tmp


def _check(world, method, path, expect, **kw):
    app, api, _layout, tmp = world
    before = snapshots.registry(app, tmp / "stores")
    r = api.request(method, path, **kw)
    assert r.status_code in (expect if isinstance(expect, tuple) else (expect,)), (
        r.status_code,
        r.text,
    )
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"code", "message", "detail"} and body["message"]
    assert snapshots.registry(app, tmp / "stores") == before, f"{method} {path} wrote something"
    return body


def _floats(*values) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


# ----------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_or_inf_in_an_uploaded_part(world, bad):
    body = _check(world, "PUT", "/v1/tasks/up/trajectory/rows/1/groups/layer.1",
                  422, content=_floats(0.5, bad, 1.0))  # fmt: skip
    assert "NaN or Inf" in body["message"]


def test_nan_in_a_checkpoint_never_reaches_a_store(tmp_path, layout):
    store = TrajectoryStore.create(tmp_path / "t", layout, chunk_cols=256)
    row = make_trajectory(layout, 1)[0]
    row["layer.1"][7] = np.inf
    before = snapshots.files(tmp_path)
    with pytest.raises(InvalidInput, match="NaN or Inf"):
        store.append(row)
    assert snapshots.files(tmp_path) == before and store.num_rows == 0


def test_nan_checkpoint_through_the_cli(tmp_path, capsys):
    arrays = {"layer.0": np.ones((3, 8), np.float32)}
    arrays["layer.0"][2, 5] = np.nan
    np.savez(tmp_path / "rows.npz", **arrays)
    assert run(["ingest", str(tmp_path / "rows.npz"), str(tmp_path / "t"), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "NaN" in err
    assert not (tmp_path / "t").exists()


# ---------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize(
    ("path", "content", "expect"),
    [
        ("/v1/tasks/up/trajectory/rows/1/groups/layer.1?offset=419", _floats(1, 2), 422),
        ("/v1/tasks/up/trajectory/rows/1/groups/layer.1?offset=0", b"\0\0\0", 422),
        ("/v1/tasks/up/trajectory/rows/1/groups/layer.1?offset=0", b"", 422),
        ("/v1/tasks/up/trajectory/rows/1/groups/layer.9?offset=0", _floats(1), 422),
        ("/v1/tasks/up/trajectory/rows/1/groups/layer.1?offset=-1", _floats(1), 422),
        ("/v1/tasks/up/trajectory/rows/99/groups/layer.1?offset=0", _floats(1), 422),
        ("/v1/tasks/up/trajectory/rows/0/groups/layer.1?offset=0", _floats(1), 409),
        ("/v1/tasks/a/trajectory/rows/6/groups/layer.1?offset=0", _floats(1), 409),
    ],
)
def test_wrong_shapes_and_rows(world, path, content, expect):
    _check(world, "PUT", path, expect, content=content)


def test_commit_of_an_incomplete_or_future_row(world):
    _check(world, "POST", "/v1/tasks/up/trajectory/rows/1/commit", 409, json={})
    _check(world, "POST", "/v1/tasks/up/trajectory/rows/5/commit", 422, json={})


# ----------------------------------------------------------------------------- layouts
def test_store_of_another_layout_cannot_be_registered(world):
    _app, _api, _layout, tmp = world
    body = _check(world, "POST", "/v1/tasks/empty/trajectory", (409, 422),
                  json={"url": str(tmp / "stores" / "other-model")})  # fmt: skip
    assert body["code"] in ("layout_mismatch", "conflict")
    _check(world, "POST", "/v1/tasks/up/trajectory", 409,
           json={"url": str(tmp / "stores" / "a")})  # fmt: skip


def test_layout_hash_that_does_not_match_its_content(world):
    _app, _api, layout, _tmp = world
    doc = layout.to_dict()
    doc["hash"] = "0" * 64
    body = _check(world, "POST", "/v1/tasks", 422, json={"id": "lie", "model": "m", "layout": doc})
    assert "hash" in body["message"]


def test_bases_across_two_models_are_refused(world):
    body = _check(world, "POST", "/v1/tasks/a/bases", 422,
                  json={"kind": "unified", "rank": 1, "tasks": ["a", "b2"]})  # fmt: skip
    assert body["code"] == "layout_mismatch"


def test_a_basis_of_another_model_is_refused_by_layout_hash(tmp_path, tiny_store):
    class Block(torch.nn.Module):
        def __init__(self, n: int) -> None:
            super().__init__()
            self.attention = torch.nn.Linear(n, 30)

    class Encoder(torch.nn.Module):
        def __init__(self, sizes) -> None:
            super().__init__()
            self.layer = torch.nn.ModuleList(Block(n) for n in sizes)

    class Model(torch.nn.Module):
        def __init__(self, sizes) -> None:
            super().__init__()
            self.encoder = Encoder(sizes)

    ours = Model([40, 40])
    layout = layout_from_model(ours)
    store = TrajectoryStore.create(tmp_path / "ours", layout, chunk_cols=256)
    for row in make_trajectory(layout, 5):
        store.append(row)
    basis = task_basis(store.url, str(tmp_path / "basis"), 2).bases[0]
    basis.check_layout(layout_from_model(ours))  # the same model: accepted
    for other in (Model([41, 40]), Model([40, 40, 40])):
        with pytest.raises(LayoutMismatch, match="another model"):
            BasisStore.open(basis.url).check_layout(layout_from_model(other))
    # A basis whose manifest has no layout is checked by its layers' sizes.
    manifest_less = BasisStore(basis.loc, {**basis.manifest, "layout": None})
    manifest_less.check_layout(layout)
    with pytest.raises(LayoutMismatch):
        manifest_less.check_layout(layout_from_model(Model([41, 40])))
    with pytest.raises(LayoutMismatch):  # same sizes, other parameter names and groups
        BasisStore.open(basis.url).check_layout(tiny_store.layout)


# ------------------------------------------------------------------------------ ranks
@pytest.mark.parametrize(
    ("task", "body"),
    [
        ("a", {"kind": "task", "rank": 6}),  # 5 checkpoints after theta0
        ("a", {"kind": "task", "rank": 2, "selection": [0]}),  # only theta0 in delta mode
        ("a", {"kind": "random", "rank": 421}),  # layer.1 has 420 values
        ("a", {"kind": "task", "rank": 0}),
        ("a", {"kind": "task", "rank": 2, "selection": [99]}),
        ("empty", {"kind": "task", "rank": 1}),  # an empty trajectory
        ("up", {"kind": "task", "rank": 1}),  # theta0 alone
        ("up", {"kind": "task", "rank": 1, "mode": "raw", "selection": "all"}),
    ],
)
def test_rank_larger_than_rows_and_empty_trajectories(world, task, body):
    _check(world, "POST", f"/v1/tasks/{task}/bases", 422, json=body)


def test_rank_larger_than_rows_in_the_cli(tmp_path, tiny_store, capsys):
    out = tmp_path / "basis"
    assert run(["basis", "compute", "-s", tiny_store.url, "-o", str(out), "-k", "50", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "rank 50" in err
    assert not out.exists()


def test_empty_store_in_the_cli(tmp_path, layout, capsys):
    empty = TrajectoryStore.create(tmp_path / "t", layout)
    out = tmp_path / "basis"
    assert run(["basis", "compute", "-s", empty.url, "-o", str(out), "-k", "1", "-q"]) == 2
    assert "empty" in capsys.readouterr().err and not out.exists()


# ------------------------------------------------------------------------------- JSON
@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b"",
        b"null",
        b"[]",
        b'{"id": "x"',
        b'{"id": "x", "model": "m", "layout": {}, "surprise": 1}',
        b"[" * 30_000 + b"]" * 30_000,  # deep nesting: a RecursionError must not be a 500
        b'{"id": "x", "model": "m", "layout": ' + b'{"a":' * 10_000 + b"1" + b"}" * 10_001,
        b'{"id": "\xff\xfe", "model": "m", "layout": {}}',  # not UTF-8
        b'{"id": "x", "model": "m", "layout": {"rule": "bert", "groups": NaN}}',
    ],
)
def test_malformed_json(world, raw):
    _check(world, "POST", "/v1/tasks", (400, 422), content=raw,
           headers={"Content-Type": "application/json"})  # fmt: skip


def test_oversized_json(world):
    raw = b'{"id": "x", "model": "m", "description": "' + b"d" * (70 << 10) + b'"}'
    _check(world, "POST", "/v1/tasks", 413, content=raw,
           headers={"Content-Type": "application/json"})  # fmt: skip


def test_oversized_upload(world):
    _check(world, "PUT", "/v1/tasks/up/trajectory/rows/1/groups/layer.0",
           413, content=b"\0" * (17 << 10))  # fmt: skip

    def chunks():  # no Content-Length: stopped while it is read
        for _ in range(20):
            yield b"\0" * 1024

    _check(world, "PUT", "/v1/tasks/up/trajectory/rows/1/groups/layer.0", 413, content=chunks())


# -------------------------------------------------------------------------------- IDs
@pytest.mark.parametrize("bad", PATHLIKE + CONTROL + UNICODE_TRICKS)
def test_bad_ids_in_bodies(world, bad):
    _app, _api, layout, _tmp = world
    _check(world, "POST", "/v1/tasks", 422, json={"id": bad, "model": "m",
                                                  "layout": layout.to_dict()})  # fmt: skip
    _check(world, "POST", "/v1/tasks/a/bases", 422,
           json={"kind": "unified", "rank": 1, "tasks": [bad]})  # fmt: skip
    _check(world, "POST", "/v1/recompute", 422, json={"task_ids": [bad], "dry_run": True})


# A literal ".." segment is resolved by the HTTP client before it is sent; "%2e%2e" is not.
@pytest.mark.parametrize("bad", ["%2e%2e", "..%2F..%2Fregistry", "a%2Fb", "%00", "%0a",
                                 "%E2%80%AE", "%EF%BD%94", "%E2%80%8B", "A"])  # fmt: skip
def test_bad_ids_in_paths(world, bad):
    app, api, _layout, tmp = world
    for method, path in [
        ("GET", f"/v1/tasks/{bad}"),
        ("POST", f"/v1/tasks/{bad}/trajectory"),
        ("PUT", f"/v1/tasks/{bad}/trajectory/rows/0/groups/layer.0"),
        ("POST", f"/v1/tasks/{bad}/bases"),
        ("PUT", f"/v1/tasks/a/bases/task/aliases/{bad}"),
        ("PUT", f"/v1/tasks/up/trajectory/rows/1/groups/{bad}"),
        ("GET", f"/v1/tasks/a/bases/task/versions/1/layers/{bad}"),
    ]:
        before = snapshots.registry(app, tmp / "stores")
        r = api.request(method, path, json={"version": 1}, headers={})
        assert 400 <= r.status_code < 500, (method, path, r.status_code, r.text)
        assert snapshots.registry(app, tmp / "stores") == before, (method, path)


@pytest.mark.parametrize("bad", ["..", "a/b", "layer\u200b0", ".hidden", "a\x00", "l\u202e1"])
def test_bad_group_names_in_a_layout(world, bad):
    _app, _api, layout, _tmp = world
    doc = layout.to_dict()
    doc["groups"][0]["name"] = bad
    doc.pop("hash")
    _check(world, "POST", "/v1/tasks", 422, json={"id": "g", "model": "m", "layout": doc})


# ---------------------------------------------------------------------------- aliases
def test_alias_pointing_to_a_missing_or_unready_version(world):
    _check(world, "PUT", "/v1/tasks/a/bases/task/aliases/prod", 404, json={"version": 99})
    body = _check(world, "PUT", "/v1/tasks/a/bases/task/aliases/prod", 409, json={"version": 2})
    assert body["code"] == "not_ready"
    _check(world, "PUT", "/v1/tasks/a/bases/task/aliases/latest", 422, json={"version": 1})
    _check(world, "GET", "/v1/tasks/a/bases/task?alias=ghost", 404)
    _check(world, "GET", "/v1/tasks/a/bases/task?version=99", 404)
    _check(world, "GET", "/v1/tasks/a/bases/task?version=2", 409)
    _check(world, "GET", "/v1/tasks/a/bases/task/versions/2/layers/layer.0", 409)
    _check(world, "DELETE", "/v1/tasks/a/bases/task/aliases/ghost", 404)


# ------------------------------------------------------------------------------ ranges
@pytest.mark.parametrize(
    "header",
    [
        "bytes=999999-",
        "bytes=-0",
        "bytes=99999999999999999999999999999999-",
        "bytes=4920-4921",  # the layer is 1230 x 2 float32 = 9840 bytes ... this one fits
    ],
)
def test_range_out_of_bounds(world, header):
    _app, api, _layout, _tmp = world
    info = api.get("/v1/tasks/a/bases/task?version=1").json()["layers"][1]
    size = info["nbytes"]
    assert size == 420 * 2 * 4
    if header == "bytes=4920-4921":
        header = f"bytes={size}-{size + 1}"
    body = _check(world, "GET", info["url"], 416, headers={"Range": header})
    assert body["code"] == "range_not_satisfiable"
    r = api.get(info["url"], headers={"Range": header})
    assert r.headers["content-range"] in (f"bytes */{size}", "bytes */*")


def test_malformed_ranges_are_ignored_not_errors(world):
    _app, api, _layout, _tmp = world
    info = api.get("/v1/tasks/a/bases/task?version=1").json()["layers"][1]
    full = api.get(info["url"]).content
    for header in ("bytes=abc", "bytes=5-2", "items=0-1", "bytes=0-1,4-5", "bytes=-"):
        r = api.get(info["url"], headers={"Range": header})
        assert r.status_code == 200 and r.content == full, header
