"""Errors as HTTP: one table maps every error type to its status; bodies are {code, message,
detail}, from which the client rebuilds the same exception class (storage.errors.ERROR_TYPES).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.schemas import ErrorPublic
from storage.errors import (
    Conflict,
    Forbidden,
    InsufficientStorage,
    InvalidInput,
    LayoutMismatch,
    NotFound,
    NotReady,
    PayloadTooLarge,
    RangeNotSatisfiable,
    ReadOnly,
    StorageError,
    TaskFailed,
    TinysubError,
    TooManyJobs,
    Unauthorized,
)

log = logging.getLogger(__name__)


# The one table: error type -> HTTP status. Subclasses not listed inherit their parent's row.
STATUS: dict[type[TinysubError], int] = {
    TinysubError: 500,
    NotFound: 404,
    Conflict: 409,
    NotReady: 409,
    InvalidInput: 422,
    LayoutMismatch: 422,
    PayloadTooLarge: 413,
    RangeNotSatisfiable: 416,
    ReadOnly: 409,
    StorageError: 500,
    InsufficientStorage: 507,
    TaskFailed: 500,
    Unauthorized: 401,
    Forbidden: 403,
    TooManyJobs: 429,
}

# Codes for errors Starlette raises itself (unknown route, wrong method).
_HTTP_CODES = {
    400: InvalidInput.code,  # a body that cannot be parsed at all (not UTF-8)
    401: Unauthorized.code,
    403: Forbidden.code,
    404: NotFound.code,
    405: "method_not_allowed",
    409: Conflict.code,
    413: PayloadTooLarge.code,
    416: RangeNotSatisfiable.code,
    422: InvalidInput.code,
}


def error_responses() -> dict[int | str, dict[str, Any]]:
    """The error statuses every /v1 operation may answer, documented with their body schema
    (OpenAPI `responses`; clients and the fuzzer check answers against it)."""
    described = {
        400: "The body cannot be parsed (not UTF-8).",
        401: "No valid bearer token.",
        403: "The token lacks the scope this needs.",
        404: "No such task, trajectory, basis, version, alias, layer, job, run or token.",
        409: "Conflicts with what is stored, or the basis is not ready (code not_ready).",
        413: "The body is over the configured limit.",
        422: "Invalid input: IDs, shapes, ranks, layouts, non-finite values.",
        500: "Internal or storage error (code storage_error for a failed checksum).",
        507: "The store is full; nothing was committed.",
    }
    return {status: {"model": ErrorPublic, "description": d} for status, d in described.items()}


def status_for(exc: TinysubError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def error_body(code: str, message: str, detail: Any = None) -> dict[str, Any]:
    return {"code": code, "message": message, "detail": jsonable_encoder(detail)}


def _headers(status: int) -> dict[str, str] | None:
    return {"WWW-Authenticate": "Bearer"} if status == 401 else None


async def _tinysub_error(_request: Request, exc: TinysubError) -> JSONResponse:
    status = status_for(exc)
    if status >= 500:
        log.error("request failed: %s", exc)
    headers = _headers(status)
    if isinstance(exc, RangeNotSatisfiable) and isinstance(exc.detail, dict):
        headers = {"Content-Range": f"bytes */{exc.detail.get('size', '*')}"}
    if isinstance(exc, TooManyJobs):
        headers = {"Retry-After": str(exc.retry_after)}
    return JSONResponse(
        error_body(exc.code, exc.message, exc.detail), status_code=status, headers=headers
    )


async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    first = errors[0] if errors else {}
    where = ".".join(str(p) for p in first.get("loc", ()))
    message = f"{where}: {first.get('msg', 'invalid request')}" if where else "invalid request"
    # Inputs are echoed back by pydantic; drop them so a rejected secret or blob is not returned.
    detail = [{k: v for k, v in e.items() if k not in ("input", "ctx", "url")} for e in errors]
    return JSONResponse(error_body(InvalidInput.code, message, detail), status_code=422)


async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = _HTTP_CODES.get(exc.status_code, TinysubError.code)
    return JSONResponse(
        error_body(code, str(exc.detail)),
        status_code=exc.status_code,
        headers=exc.headers or _headers(exc.status_code),
    )


async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return JSONResponse(
        error_body(TinysubError.code, "internal error; the server log has the details"),
        status_code=500,
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(TinysubError, _tinysub_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
