"""Where the client finds its token when none is passed: never required on a command line,
where `ps` and shell history would show it."""

from __future__ import annotations

import os
from pathlib import Path

from storage.errors import InvalidInput


def token_from_env() -> str | None:
    """TINYSUB_TOKEN, else the first line of the file TINYSUB_TOKEN_FILE names (a mounted
    secret, e.g. /run/secrets/tinysub_token); None when neither is set."""
    token = os.environ.get("TINYSUB_TOKEN")
    if token:
        return token
    path = os.environ.get("TINYSUB_TOKEN_FILE")
    if not path:
        return None
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InvalidInput(f"TINYSUB_TOKEN_FILE {path!r} cannot be read: {exc.strerror}") from exc
    token = lines[0].strip() if lines else ""
    if not token:
        raise InvalidInput(f"TINYSUB_TOKEN_FILE {path!r} holds no token on its first line")
    return token
