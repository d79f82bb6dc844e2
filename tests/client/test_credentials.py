"""The token comes from the environment or a file, never only from the command line."""

from __future__ import annotations

import pytest

from client.client import Client
from client.credentials import token_from_env
from storage.errors import InvalidInput


def test_env_first_then_the_file(tmp_path, monkeypatch):
    monkeypatch.delenv("TINYSUB_TOKEN", raising=False)
    monkeypatch.delenv("TINYSUB_TOKEN_FILE", raising=False)
    assert token_from_env() is None
    secret = tmp_path / "token"
    secret.write_text("tsk_from_file\n")
    monkeypatch.setenv("TINYSUB_TOKEN_FILE", str(secret))
    assert token_from_env() == "tsk_from_file"
    assert Client("http://127.0.0.1:9", cache_dir=tmp_path / "c").token == "tsk_from_file"
    monkeypatch.setenv("TINYSUB_TOKEN", "tsk_env")
    assert token_from_env() == "tsk_env"
    assert Client("http://127.0.0.1:9", token="tsk_arg", cache_dir=tmp_path / "c").token == (
        "tsk_arg"
    )


@pytest.mark.parametrize("content", [None, "", "\n  \n"])
def test_a_missing_or_empty_token_file_is_a_clear_error(tmp_path, monkeypatch, content):
    monkeypatch.delenv("TINYSUB_TOKEN", raising=False)
    secret = tmp_path / "token"
    if content is not None:
        secret.write_text(content)
    monkeypatch.setenv("TINYSUB_TOKEN_FILE", str(secret))
    with pytest.raises(InvalidInput, match="TINYSUB_TOKEN_FILE"):
        token_from_env()
