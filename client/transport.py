"""What the client's helpers (jobs, uploads) need from a client: two public request methods.

Why a Protocol: `Client` builds `Job`s and calls `send_rows`; if those modules imported
`Client` back, client.client, client.jobs and client.upload would import each other. They
type against this instead, and anything with these two methods (a test double too) will do.
"""

from __future__ import annotations

from typing import Any, Protocol

import httpx

from client.retry import RetryPolicy


class Requester(Protocol):
    def request(
        self,
        method: str,
        path: str,
        *,
        idempotent: bool | None = None,
        retry: RetryPolicy | None = None,
        **kw: Any,
    ) -> httpx.Response:
        """Send one request with retries; raise the registry's error on a non-2xx answer."""
        ...

    def request_json(self, method: str, path: str, **kw: Any) -> Any:
        """`request`, then the body as JSON (None for an empty body)."""
        ...
