"""A registry job seen from the client: refresh, wait, cancel; and ordering a recompute job."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from client.errors import error_from_body
from client.transport import Requester
from storage.vocabulary import JobKind, JobStatus


class Job:
    """A registry job. Attributes mirror the server's JobPublic; `wait()` blocks until it ends.

    `kind` is 'basis' (`basis` names the basis it computes) or 'recompute' (`basis` is None;
    `params` is its request and, once it succeeded, `result` is {queued, skipped})."""

    def __init__(self, client: Requester, data: dict[str, Any]) -> None:
        self._client = client
        self._update(data)

    def _update(self, data: dict[str, Any]) -> None:
        self.data = data
        self.id: int = data["id"]
        self.status = JobStatus(data["status"])
        self.kind = JobKind(data.get("kind", JobKind.BASIS))
        self.basis: dict[str, Any] | None = data.get("basis")
        self.params: dict[str, Any] | None = data.get("params")
        self.result: dict[str, Any] | None = data.get("result")
        self.progress: dict[str, Any] = data.get("progress") or {}
        self.error: str | None = data.get("error")
        self.error_code: str | None = data.get("error_code")
        self.attempts: int = data.get("attempts", 0)

    @property
    def label(self) -> str:
        """What the job works on: 'sst2/task v3', or 'recompute'."""
        b = self.basis
        return f"{b['task_id']}/{b['kind']} v{b['version']}" if b else self.kind

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.label} {self.status}>"

    @property
    def done(self) -> bool:
        return self.status.finished

    def refresh(self) -> Job:
        self._update(self._client.request_json("GET", f"/v1/jobs/{self.id}"))
        return self

    def cancel(self) -> Job:
        self._update(self._client.request_json("POST", f"/v1/jobs/{self.id}/cancel"))
        return self

    @property
    def fraction(self) -> float | None:
        """How far the current phase is, from the server's progress record (None if unknown)."""
        phase = self.progress.get("phase")
        counts = (self.progress.get("phases") or {}).get(phase) or {}
        total = counts.get("total")
        return counts.get("done", 0) / total if total else None

    def wait(
        self,
        timeout: float | None = None,
        poll: float = 0.25,
        raise_on_error: bool = True,
        *,
        on_update: Callable[[Job], None] | None = None,
    ) -> Job:
        """Poll until the job ends. A failed or cancelled job raises the error it recorded
        (rebuilt as its TinysubError class) unless raise_on_error is False; TimeoutError when
        `timeout` seconds pass first. `on_update(job)` runs after every poll (progress bars)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = min(poll, 0.05)
        while not self.refresh().done:
            if on_update is not None:
                on_update(self)
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {self.id} still {self.status} after {timeout} s")
            time.sleep(delay)
            delay = min(poll, delay * 2)
        if on_update is not None:
            on_update(self)
        if raise_on_error and self.status != JobStatus.SUCCEEDED:
            code = self.error_code if self.error_code != "cancelled" else "conflict"
            raise error_from_body(
                500, {"code": code, "message": f"job {self.id} {self.status}: {self.error}"}
            )
        return self


def start_recompute(
    client: Requester,
    *,
    task_ids: list[str] | None = None,
    model: str | None = None,
    kinds: list[str] | None = None,
    stale_only: bool = False,
    dry_run: bool = False,
) -> Job:
    """Order a recompute job (POST /v1/recompute) and return it at once: once it succeeded,
    `job.result` is {queued: [...], skipped: [...]}, the basis jobs it queued and the bases it
    skipped (with dry_run: what it would queue). `TooManyJobs` when the token is at its cap."""
    body: dict[str, Any] = {"stale_only": stale_only, "dry_run": dry_run}
    for key, value in (("task_ids", task_ids), ("model", model), ("kinds", kinds)):
        if value is not None:
            body[key] = value
    return Job(client, client.request_json("POST", "/v1/recompute", json=body))
