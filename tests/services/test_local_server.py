"""services.local.LocalServer: the data dir it is given means the same folder to the caller and
to the server, which runs with the repository as its working directory."""

from __future__ import annotations

from services.local import LocalServer


def test_a_relative_data_dir_is_the_callers(tmp_path, monkeypatch):
    # `tinysub demo` from any folder: the token it writes and the server it starts must share
    # one database (before: the server resolved ".tinysub/demo/registry" in the repository,
    # the token went to the caller's folder, and every request was 401).
    monkeypatch.chdir(tmp_path)
    server = LocalServer(".tinysub/registry")
    assert server.data_dir == tmp_path / ".tinysub" / "registry"
    assert server.env["TINYSUB_DATA_DIR"] == str(tmp_path / ".tinysub" / "registry")
