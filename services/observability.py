"""What an operator sees: Prometheus metrics, a request ID on every response and log line, and
JSON logs on request.

- `Metrics`: one `prometheus_client.CollectorRegistry` per app (several apps in one process, as
  in the tests, never share counters). Requests, latency and bytes are counted per route
  *template* (`/v1/tasks/{task_id}`), never per raw path, so the label set stays bounded; the
  job queue depth is read from the database at scrape time, so it is right whichever API
  process ran the jobs.
- `Observe`: the ASGI middleware that times each request, counts its body bytes in and out,
  and sets the request ID (the caller's `X-Request-ID` when it is a sane token, else a new one)
  into a context variable that `RequestIdFilter` adds to every log record.
- `configure_logging`: text or JSON lines (`TINYSUB_LOG_FORMAT=json`), both with the request ID.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.db import Database
from services.models import Job
from storage.vocabulary import JobStatus

REQUEST_ID_HEADER = "X-Request-ID"
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("tinysub_request_id", default="-")
# A caller's ID is echoed only if it is a short token: no log injection, no unbounded values.
_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
UNMATCHED = "<unmatched>"
# Registry requests span a 304 in under a millisecond to a multi-GB layer stream.
LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
JOB_BUCKETS = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)


class _JobQueue(Collector):
    """`tinysub_jobs{status}`: jobs per status, counted in the database when scraped."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("tinysub_jobs", "Jobs by status.", labels=["status"])
        with self.db.session() as s:
            counts = dict(s.execute(select(Job.status, func.count()).group_by(Job.status)).all())
        for status in JobStatus:
            family.add_metric([status.value], counts.get(status, 0))
        yield family


class Metrics:
    """The registry's metrics; `render()` is the /metrics body."""

    def __init__(self, db: Database) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "tinysub_http_requests",
            "HTTP requests by method, route template and status.",
            ["method", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "tinysub_http_request_duration_seconds",
            "Time to the last byte of the response, by method and route template.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.request_bytes = Counter(
            "tinysub_http_request_bytes",
            "Request body bytes received (upload parts among them), by route template.",
            ["route"],
            registry=r,
        )
        self.response_bytes = Counter(
            "tinysub_http_response_bytes",
            "Response body bytes sent (layer streams among them), by route template.",
            ["route"],
            registry=r,
        )
        self.auth_failures = Counter(
            "tinysub_auth_failures",
            "Requests refused for their token: 401 (missing, unknown, revoked) or 403 (scope).",
            ["status"],
            registry=r,
        )
        self.job_seconds = Histogram(
            "tinysub_job_duration_seconds",
            "Wall time of a job attempt, by basis kind and the status it ended in.",
            ["kind", "status"],
            buckets=JOB_BUCKETS,
            registry=r,
        )
        r.register(_JobQueue(db))

    def observe_request(
        self,
        method: str,
        route: str,
        status: int,
        seconds: float,
        bytes_in: int,
        bytes_out: int,
    ) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)
        if bytes_in:
            self.request_bytes.labels(route).inc(bytes_in)
        if bytes_out:
            self.response_bytes.labels(route).inc(bytes_out)
        if status in (401, 403):
            self.auth_failures.labels(str(status)).inc()

    def observe_job(self, kind: str, status: str, seconds: float) -> None:
        self.job_seconds.labels(kind, status).observe(seconds)


class RouteTemplates:
    """Maps a request path to its route template, from the app's OpenAPI paths (read once, on
    the first request, when every route is mounted). Matched here rather than read from the
    scope, where FastAPI leaves the route of an included router without its prefix."""

    def __init__(self, templates: Callable[[], Iterable[str]]) -> None:
        self._source = templates
        self._compiled: list[tuple[re.Pattern[str], str]] | None = None

    def __call__(self, path: str) -> str:
        if self._compiled is None:
            self._compiled = [
                (re.compile("^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(t)) + "$"), t)
                for t in self._source()
            ]
        for pattern, template in self._compiled:
            if pattern.match(path):
                return template
        return UNMATCHED


class Observe:
    """ASGI middleware: request ID, timing and byte counts for every HTTP request."""

    def __init__(
        self, app: ASGIApp, *, metrics: Metrics, templates: Callable[[], Iterable[str]]
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.route_of = RouteTemplates(templates)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(REQUEST_ID_HEADER.lower().encode(), b"")
        rid = given.decode("latin-1")
        if not _SANE_ID.fullmatch(rid):
            rid = uuid.uuid4().hex
        token = request_id.set(rid)
        start = time.perf_counter()
        state = {"status": 500, "in": 0, "out": 0}

        async def counted_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                state["in"] += len(message.get("body", b""))
            return message

        async def tagged_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                headers = [h for h in message.get("headers", []) if h[0] != b"x-request-id"]
                headers.append((b"x-request-id", rid.encode()))
                message = {**message, "headers": headers}
            elif message["type"] == "http.response.body":
                state["out"] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, counted_receive, tagged_send)
        finally:
            self.metrics.observe_request(
                scope["method"],
                self.route_of(scope["path"]),
                state["status"],
                time.perf_counter() - start,
                state["in"],
                state["out"],
            )
            request_id.reset(token)


class RequestIdFilter(logging.Filter):
    """Puts the current request's ID on every record as `request_id` ("-" outside requests)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id (and exception)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


def log_config(fmt: str, level: str = "info") -> dict[str, Any]:
    """A `logging.config.dictConfig` for the server: uvicorn's loggers and ours, one handler,
    text or JSON, each record with its request ID."""
    formatter = {"()": f"{__name__}.JsonFormatter"} if fmt == "json" else {"format": TEXT_FORMAT}
    handler = {
        "class": "logging.StreamHandler",
        "formatter": "main",
        "filters": ["request_id"],
        "stream": "ext://sys.stderr",
    }
    lvl = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": f"{__name__}.RequestIdFilter"}},
        "formatters": {"main": formatter},
        "handlers": {"main": handler},
        "loggers": {
            "uvicorn": {"handlers": ["main"], "level": lvl, "propagate": False},
            "uvicorn.error": {"level": lvl},
            "uvicorn.access": {"handlers": ["main"], "level": lvl, "propagate": False},
        },
        "root": {"handlers": ["main"], "level": lvl},
    }
