"""Tasks: slugs only, idempotent creation, pagination, layout checks."""

from __future__ import annotations

import pytest

from storage.layout import build_layout


def _body(task_id, layout, model="tiny", **kw):
    return {"id": task_id, "model": model, "layout": layout.to_dict(), **kw}


def test_create_get_list(api, layout):
    r = api.post("/v1/tasks", json=_body("sst2", layout, revision="abc"))
    assert r.status_code == 201
    task = r.json()
    assert task["layout_hash"] == layout.hash
    assert [g["size"] for g in task["groups"]] == [g.size for g in layout.groups]
    assert api.get("/v1/tasks/sst2").json()["revision"] == "abc"
    assert api.get("/v1/tasks/sst2/layout").json()["hash"] == layout.hash


def test_create_is_idempotent_and_conflicts_on_change(api, layout):
    assert api.post("/v1/tasks", json=_body("a", layout)).status_code == 201
    assert api.post("/v1/tasks", json=_body("a", layout)).status_code == 200
    r = api.post("/v1/tasks", json=_body("a", layout, model="other"))
    assert r.status_code == 409 and r.json()["code"] == "conflict"


def test_pagination_and_model_filter(api, layout):
    for i in range(7):
        api.post("/v1/tasks", json=_body(f"t{i}", layout, model="m1" if i % 2 else "m2"))
    page = api.get("/v1/tasks", params={"limit": 3, "offset": 3}).json()
    assert page["total"] == 7 and [t["id"] for t in page["items"]] == ["t3", "t4", "t5"]
    assert api.get("/v1/tasks", params={"model": "m1"}).json()["total"] == 3


@pytest.mark.parametrize(
    "bad",
    ["..", "a/b", "A", "t\u00e4sk", "t\u0430sk", "a\x00b", "-lead", "x" * 65, "a.b", " a", ""],
)
def test_task_ids_must_be_slugs(api, layout, bad):
    r = api.post("/v1/tasks", json=_body(bad, layout))
    assert r.status_code == 422, bad
    assert r.json()["code"] == "invalid_input"
    assert api.get("/v1/tasks").json()["total"] == 0


@pytest.mark.parametrize(
    "path", ["/v1/tasks/..", "/v1/tasks/%2e%2e", "/v1/tasks/A", "/v1/tasks/a%00"]
)
def test_bad_ids_in_paths_never_reach_a_handler(api, path):
    assert api.get(path).status_code in (404, 422)


def test_layout_must_be_a_layout_with_safe_group_names(api, layout):
    r = api.post("/v1/tasks", json={"id": "t", "model": "m", "layout": {"groups": 3}})
    assert r.status_code == 422
    evil = build_layout([("w.0", (3,)), ("w.1", (2,))], r"regex:^(.*)$")
    r = api.post("/v1/tasks", json=_body("t", evil))
    assert r.status_code == 201  # plain names are fine
    doc = layout.to_dict()
    doc["groups"][0]["name"] = "../../escape"
    doc.pop("hash")
    r = api.post("/v1/tasks", json={"id": "u", "model": "m", "layout": doc})
    assert r.status_code == 422 and "group name" in r.json()["message"]
    tampered = layout.to_dict()
    tampered["hash"] = "0" * 64
    assert api.post("/v1/tasks", json=_body("v", layout) | {"layout": tampered}).status_code == 422


def test_unknown_task_is_404(api):
    r = api.get("/v1/tasks/nope")
    assert r.status_code == 404 and r.json()["code"] == "not_found"
