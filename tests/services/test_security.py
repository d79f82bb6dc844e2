from __future__ import annotations

import pytest

from services.security import check_slug, confine_url, has_scope
from services.settings import Settings
from storage.errors import Forbidden, InvalidInput


def test_scope_order():
    assert has_scope(["admin"], "read") and has_scope(["write"], "read")
    assert not has_scope(["read"], "write") and not has_scope(["write"], "admin")


def test_slugs():
    assert check_slug("sst-2_a") == "sst-2_a"
    for bad in ("..", "a/b", "Ab", "a b", "\u212a", "a\n"):
        with pytest.raises(InvalidInput):
            check_slug(bad)


def test_confine_local_paths(tmp_path):
    s = Settings(data_dir=tmp_path / "d", trusted_store_prefixes=[str(tmp_path / "ok")])
    (tmp_path / "ok" / "x").mkdir(parents=True)
    assert confine_url(str(tmp_path / "ok" / "x"), s) == str((tmp_path / "ok" / "x").resolve())
    assert confine_url(f"file://{tmp_path}/ok/x", s).endswith("/ok/x")
    root = s.resolved_store_root
    assert confine_url(root + "/trajectories/t", s).startswith(root)
    for bad in (f"{tmp_path}/ok/../nope", f"{tmp_path}/okay", "/", f"{root}/../registry.db"):
        with pytest.raises(Forbidden):
            confine_url(bad, s)
    with pytest.raises(InvalidInput):
        confine_url("ok/x", s)


def test_confine_remote_urls(tmp_path):
    s = Settings(
        data_dir=tmp_path, store_root="s3://bucket/tinysub", trusted_store_prefixes=["gs://b2/p"]
    )
    assert confine_url("s3://bucket/tinysub/traj/a", s) == "s3://bucket/tinysub/traj/a"
    assert confine_url("gs://b2/p/x", s) == "gs://b2/p/x"
    for bad in (
        "s3://bucket/tinysub/../other",
        "s3://bucket/tinysub2/x",
        "s3://other/tinysub/x",
        "gcs://b2/p/x",
        "memory://bucket/tinysub/x",
        "http://bucket/tinysub/x",
        "s3://bucket/tinysub/./x",
    ):
        with pytest.raises(Forbidden):
            confine_url(bad, s)
    with pytest.raises(InvalidInput):
        confine_url("s3://bucket/tinysub/x\r\n", s)
