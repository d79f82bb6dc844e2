"""Server errors as the exceptions they were on the server.

The registry answers errors with `{code, message, detail}`; the code names a class in
`storage.errors.ERROR_TYPES`, so `NotFound` on the server is `NotFound` (and `KeyError`) here.
Codes this client does not know fall back to the class of their HTTP status.
"""

from __future__ import annotations

import email.utils
import time
from typing import Any

from storage.errors import (
    ERROR_TYPES,
    Conflict,
    Forbidden,
    InsufficientStorage,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    RangeNotSatisfiable,
    StorageError,
    TinysubError,
    Unauthorized,
)

STATUS_FALLBACK: dict[int, type[TinysubError]] = {
    400: InvalidInput,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    405: InvalidInput,
    409: Conflict,
    413: PayloadTooLarge,
    416: RangeNotSatisfiable,
    422: InvalidInput,
    507: InsufficientStorage,
}


def error_from_body(status: int, body: Any) -> TinysubError:
    """Rebuild the server's exception from a status and a decoded JSON body (or anything)."""
    code, message, detail = None, None, None
    if isinstance(body, dict):
        code, message, detail = body.get("code"), body.get("message"), body.get("detail")
    cls = ERROR_TYPES.get(code) if isinstance(code, str) else None
    if cls is None:
        cls = STATUS_FALLBACK.get(status) or (StorageError if status >= 500 else TinysubError)
    exc = cls(str(message or f"the registry answered HTTP {status}"), detail=detail)
    exc.status_code = status  # type: ignore[attr-defined]
    exc.server_code = code  # type: ignore[attr-defined]
    return exc


def raise_for_response(response) -> None:
    """Raise the rebuilt exception for an httpx response with an error status."""
    if response.status_code < 400:
        return
    try:
        response.read()
        body = response.json()
    except Exception:  # noqa: BLE001 - not JSON: a proxy's error page, a truncated body
        body = None
    exc = error_from_body(response.status_code, body)
    # 429 and 503 may say when to come back; the client's retries wait at least that long.
    exc.retry_after = retry_after(response.headers.get("retry-after"))  # type: ignore[attr-defined]
    raise exc


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP-date (RFC 9110 10.2.3);
    None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
