"""Issue 12, item 7: URL confinement.

- http(s) prefixes cannot be escaped with percent-encoded dot segments: the URL is decoded once
  (as yarl will before the request) and checked on that form; double encoding is not decoded
  twice, and a segment that still encodes a dot or slash after one decoding is refused.
- Prefixes are compared on whole path segments: `/x/stores` does not cover `/x/stores-evil`,
  and the store root's credentials are not given to a sibling prefix.
- A registered local store may not contain symbolic links (reads would follow them out).
"""

from __future__ import annotations

import os
import shutil
from types import SimpleNamespace

import pytest

from services.security import confine_url
from services.settings import Settings
from services.trajectories import _options
from storage.errors import Forbidden
from tests.services.helpers import write_store

PREFIX = "https://host/data/"


def _remote(tmp_path) -> Settings:
    return Settings(data_dir=tmp_path / "d", trusted_store_prefixes=[PREFIX])


def _create_task(api, layout, task_id="t"):
    body = {"id": task_id, "model": "tiny", "layout": layout.to_dict()}
    assert api.post("/v1/tasks", json=body).status_code == 201


def _assert_refused(r, tmp_path, status=403):
    """The standard error body, without any server path in it."""
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) >= {"code", "message", "detail"}
    assert str(tmp_path) not in r.text


# ------------------------------------------------------------------------ http(s) prefixes
@pytest.mark.parametrize(
    "url",
    [
        "https://host/data/%2e%2e/secret/",
        "https://host/data/../secret/",
        "https://host/data/%2E%2E/secret/",
        "https://host/data/%2e./secret/",
        "https://host/data/x/%2e%2e/%2E%2e/secret",
        "https://host/data/%2e",
        "https://host/data/..%2fsecret",
        "https://host/data/..%5csecret",
        # Double encoding: one decoding leaves '%2e%2e', still an encoded '..'; refused rather
        # than decoded a second time (a proxy or server behind may decode it again).
        "https://host/data/%252e%252e/secret/",
        "https://host/data%2f..%2fsecret",
        "https://host/data/x?p=../../secret",
        "https://host/data-evil/x",
        "https://host/database/x",
    ],
)
def test_http_prefix_cannot_be_escaped(tmp_path, url):
    with pytest.raises(Forbidden):
        confine_url(url, _remote(tmp_path))


def test_http_prefix_is_decoded_exactly_once(tmp_path):
    s = _remote(tmp_path)
    assert confine_url("https://host/data/x/y", s) == "https://host/data/x/y"
    assert confine_url("https://host/data/", s) == "https://host/data/"
    assert confine_url("https://host/data/a%20b/c", s) == "https://host/data/a%20b/c"
    # '%61' is 'a' after one decoding (yarl requests /data/x): the same place, accepted.
    assert confine_url("https://host/d%61ta/x", s) == "https://host/d%61ta/x"
    # '%2561' is '%61' after one decoding: a directory named 'd%61ta', not 'data'. Accepting it
    # would mean it had been decoded twice.
    with pytest.raises(Forbidden):
        confine_url("https://host/%2564ata/x", s)


def test_http_escape_refused_by_the_api_with_the_standard_error(tmp_path, layout):
    from tests.services.helpers import api_client, make_app

    app = make_app(tmp_path, trusted_store_prefixes=[str(tmp_path / "stores"), PREFIX])
    api = api_client(app, "admin")
    _create_task(api, layout)
    for url in ("https://host/data/%2e%2e/secret/", "https://host/data/%252e%252e/secret/"):
        _assert_refused(api.post("/v1/tasks/t/trajectory", json={"url": url}), tmp_path)
    assert api.get("/v1/tasks/t/trajectory").status_code == 404


# ------------------------------------------------------------------------- local prefixes
def test_local_prefix_is_compared_on_segments(tmp_path):
    s = Settings(data_dir=tmp_path / "d", trusted_store_prefixes=[str(tmp_path / "stores")])
    (tmp_path / "stores" / "x").mkdir(parents=True)
    (tmp_path / "stores-evil" / "x").mkdir(parents=True)
    assert confine_url(str(tmp_path / "stores" / "x"), s) == str((tmp_path / "stores/x").resolve())
    with pytest.raises(Forbidden):
        confine_url(str(tmp_path / "stores-evil" / "x"), s)


# ----------------------------------------------------------------- store root credentials
@pytest.mark.parametrize(
    "root, under, sibling",
    [
        ("s3://bucket/root", "s3://bucket/root/trajectories/t", "s3://bucket/root-sibling/x"),
        ("s3://bucket/root/", "s3://bucket/root", "s3://bucket/rootx"),
        ("gs://bucket/root", "gs://bucket/root/a", "s3://bucket/root/a"),
        ("/srv/root", "/srv/root/trajectories/t", "/srv/root-sibling/x"),
    ],
)
def test_root_credentials_go_only_below_the_root(tmp_path, root, under, sibling):
    opts = {"key": "AKIA-test", "secret": "s"}
    reg = SimpleNamespace(
        settings=Settings(data_dir=tmp_path / "d", store_root=root, storage_options=opts)
    )
    assert _options(reg, under) == opts
    assert _options(reg, sibling) == {}


# --------------------------------------------------------------- symlinks in local stores
def _outside_store(tmp_path, layout):
    return write_store(tmp_path / "elsewhere", "x", layout, seed=7)


def _link_group(store, outside, group):
    shutil.rmtree(os.path.join(store.url, group))
    os.symlink(os.path.join(outside.url, group), os.path.join(store.url, group))


def _link_chunk(store, outside, group):
    chunk = os.path.join(store.url, group, "c", "0", "0")
    os.remove(chunk)
    os.symlink(os.path.join(outside.url, group, "c", "0", "0"), chunk)


def _link_etc(store, outside, group):
    os.symlink("/etc", os.path.join(store.url, group, "c", "etc"))


@pytest.mark.parametrize("plant", [_link_group, _link_chunk, _link_etc])
def test_store_with_symlinks_out_is_refused_at_registration(api, tmp_path, layout, plant):
    _create_task(api, layout)
    store = write_store(tmp_path, "s", layout)
    plant(store, _outside_store(tmp_path, layout), layout.group_names[0])
    r = api.post("/v1/tasks/t/trajectory", json={"url": store.url})
    _assert_refused(r, tmp_path)
    assert r.json()["code"] == "forbidden" and "symbolic link" in r.json()["message"]
    assert api.get("/v1/tasks/t/trajectory").status_code == 404


def test_store_without_symlinks_still_registers(api, tmp_path, layout):
    _create_task(api, layout)
    store = write_store(tmp_path, "s", layout)
    assert api.post("/v1/tasks/t/trajectory", json={"url": store.url}).status_code == 201
