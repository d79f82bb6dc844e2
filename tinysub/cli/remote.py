"""Options shared by the commands that talk to a registry: its URL and a token."""

from __future__ import annotations

from typing import Annotated

import typer

from client.client import Client

UrlOption = Annotated[
    str,
    typer.Option("--url", envvar="TINYSUB_URL", help="The registry (env TINYSUB_URL)."),
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="TINYSUB_TOKEN",
        help="Bearer token. Prefer the env TINYSUB_TOKEN or TINYSUB_TOKEN_FILE (a file holding "
        "it): a token on the command line shows in `ps` and shell history.",
        show_default=False,
    ),
]
DEFAULT_URL = "http://127.0.0.1:8000"


def open_client(url: str, token: str | None, **kw):
    """The Client the commands use (tests replace this function to pass an in-process app)."""
    return Client(url, token=token, **kw)
