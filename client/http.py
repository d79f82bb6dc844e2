"""The registry's HTTP plumbing under `Client`: auth header, retries, JSON bodies.

A base class rather than part of client.py so that the client's parts (client.basis_api and
client.client) each stay a readable size; `Client` is the one class to use.
"""

from __future__ import annotations

import os
from typing import Any, Self

import httpx

from client.cache import BasisCache, default_cache_dir, server_key
from client.credentials import token_from_env
from client.errors import raise_for_response
from client.retry import IDEMPOTENT_METHODS, RetryPolicy

DEFAULT_TIMEOUT = httpx.Timeout(30.0, read=300.0)


class RegistryHTTP:
    """A connection to the registry; see `client.Client` for the parameters."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        cache_dir: str | os.PathLike | None = None,
        http: httpx.Client | None = None,
        retries: int | RetryPolicy | None = RetryPolicy(),
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token if token is not None else token_from_env()
        self.cache = BasisCache(cache_dir if cache_dir is not None else default_cache_dir())
        self._server = server_key(self.base_url)
        self._owns_http = http is None
        self._http = http if http is not None else httpx.Client(timeout=timeout)
        self._timeout = timeout
        self.retry = RetryPolicy.of(retries)

    # --------------------------------------------------------------------------- plumbing
    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        headers.update(extra or {})
        return headers

    def request(
        self,
        method: str,
        path: str,
        *,
        idempotent: bool | None = None,
        retry: RetryPolicy | None = None,
        **kw: Any,
    ) -> httpx.Response:
        """Send a request with the client's retries. `idempotent` defaults to what the method
        promises; a POST the registry makes idempotent passes True. The body (`content`,
        `json`) must be bytes or data, so that a retry can send it again."""
        headers = self._headers(kw.pop("headers", None))
        url = self.base_url + path

        def send() -> httpx.Response:
            response = self._http.request(method, url, headers=headers, **kw)
            raise_for_response(response)
            return response

        if idempotent is None:
            idempotent = method.upper() in IDEMPOTENT_METHODS
        policy = retry or self.retry
        return policy.call(send, what=f"{method} {path}", idempotent=idempotent)

    def request_json(self, method: str, path: str, **kw: Any) -> Any:
        response = self.request(method, path, **kw)
        return response.json() if response.content else None
