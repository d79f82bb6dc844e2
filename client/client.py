"""`Client`: the registry over HTTP (httpx), with a verified, content-addressed basis cache."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from client.basis_api import BasisAPI
from client.http import DEFAULT_TIMEOUT
from client.jobs import Job, start_recompute
from client.sources import rows_from
from client.transfer import progress_bar
from client.upload import send_rows
from storage.errors import NotFound
from storage.layout import Layout

# DEFAULT_TIMEOUT lives with the HTTP plumbing; it stays importable from here.
__all__ = ["DEFAULT_PART_BYTES", "DEFAULT_TIMEOUT", "Client"]

DEFAULT_PART_BYTES = 8 << 20


class Client(BasisAPI):
    """The tinysub registry.

    Parameters
    ----------
    base_url:
        The server, e.g. ``http://127.0.0.1:8000``.
    token:
        A bearer token (``tinysub token create``); default: ``TINYSUB_TOKEN``, else the
        first line of the file ``TINYSUB_TOKEN_FILE`` names (a mounted secret).
    timeout:
        Seconds, or an ``httpx.Timeout``.
    cache_dir:
        Where pulled bases are kept; default: ``TINYSUB_CACHE`` or ``~/.cache/tinysub``.
    http:
        Any ``httpx.Client`` to send requests through (tests pass FastAPI's TestClient).
    retries:
        A ``RetryPolicy``, or how many times to retry (0: never). Idempotent requests are
        retried after network errors and 429/502/503/504 (honouring Retry-After) with
        exponential backoff and full jitter; downloads resume from their last verified byte
        and uploads from their last acknowledged part. See ``client.retry``.

    The HTTP plumbing (`request`, `request_json`) is in client.http and the bases (`pull_basis`,
    `load_basis`, `resolve_basis`, aliases, ...) in client.basis_api; this class adds tasks,
    trajectories, jobs, tokens and runs.
    """

    # ------------------------------------------------------------------------------ tasks
    def health(self) -> dict:
        return self.request_json("GET", "/v1/health")

    def create_task(
        self,
        task_id: str,
        *,
        model: str,
        layout: Layout | dict,
        revision: str | None = None,
        description: str = "",
    ) -> dict:
        """Create a task (idempotent for the same model, revision and layout)."""
        body = {
            "id": task_id,
            "model": model,
            "revision": revision,
            "layout": layout.to_dict() if isinstance(layout, Layout) else layout,
            "description": description,
        }
        return self.request_json("POST", "/v1/tasks", json=body, idempotent=True)

    def get_task(self, task_id: str) -> dict:
        return self.request_json("GET", f"/v1/tasks/{task_id}")

    def list_tasks(self, *, model: str | None = None, offset: int = 0, limit: int = 50) -> dict:
        """One page: {items, total, offset, limit}. `iter_tasks` walks all pages."""
        params: dict[str, Any] = {"offset": offset, "limit": limit}
        if model is not None:
            params["model"] = model
        return self.request_json("GET", "/v1/tasks", params=params)

    def iter_tasks(self, *, model: str | None = None, page_size: int = 100) -> Iterator[dict]:
        offset = 0
        while True:
            page = self.list_tasks(model=model, offset=offset, limit=page_size)
            yield from page["items"]
            offset += len(page["items"])
            if not page["items"] or offset >= page["total"]:
                return

    def task_layout(self, task_id: str) -> Layout:
        return Layout.from_dict(self.request_json("GET", f"/v1/tasks/{task_id}/layout"))

    # ------------------------------------------------------------------------ trajectories
    def trajectory(self, task_id: str, *, page_size: int = 500) -> dict:
        """The task's trajectory with every committed row's sha256 (`row_sha256`), its pages
        followed; `trajectory_page` gets one page."""
        hashes: list[dict[str, str]] = []
        offset: int | None = 0
        while offset is not None:
            page = self.trajectory_page(task_id, offset=offset, limit=page_size)
            hashes += page["row_sha256"]
            # A server from before pages answers everything at once, without next_offset.
            offset = page.get("next_offset")
        # The last page's counts include rows committed while the earlier ones were read.
        return {
            **page,
            "row_sha256": hashes,
            "offset": 0,
            "limit": len(hashes),
            "next_offset": None,
        }

    def trajectory_page(self, task_id: str, *, offset: int = 0, limit: int = 50) -> dict:
        """The trajectory with the sha256s of rows [offset, offset + limit) and `next_offset`
        (None on the last page)."""
        params = {"offset": offset, "limit": limit}
        return self.request_json("GET", f"/v1/tasks/{task_id}/trajectory", params=params)

    def register_trajectory(self, task_id: str, url: str) -> dict:
        """Register an existing store (under the server's store root or a trusted prefix)."""
        return self.request_json(
            "POST", f"/v1/tasks/{task_id}/trajectory", json={"url": url}, idempotent=True
        )

    def upload_trajectory(
        self,
        task_id: str,
        source: Any,
        *,
        base: str | os.PathLike | None = None,
        dtype: str = "float32",
        part_bytes: int = DEFAULT_PART_BYTES,
        progress: bool = False,
    ) -> dict:
        """Upload rows to the task's registry-side store, resuming where an earlier upload
        stopped.

        `source` is a local trajectory store (path, URL or TrajectoryStore), a checkpoint folder
        (`checkpoint-N/model.safetensors`; `base` gives theta0 as row 0), or an iterable of
        {group: vector} rows. Committed rows are compared by sha256 and not sent again (a row
        that differs raises Conflict); a half-sent row is dropped and sent again. Every row is
        checked (groups, sizes, finite values) before any byte of it is sent.
        """
        layout = self.task_layout(task_id)
        try:
            status = self.trajectory(task_id)
        except NotFound:
            self.request_json(
                "POST", f"/v1/tasks/{task_id}/trajectory", json={"dtype": dtype}, idempotent=True
            )
            # Every page: a store left by a request that died before the registry's database
            # commit is taken over with the rows it holds.
            status = self.trajectory(task_id)
        with progress_bar(progress, f"upload {task_id}") as bar:
            send_rows(
                self, task_id, rows_from(source, layout, base), layout, status, part_bytes, bar
            )
        return self.trajectory(task_id)

    # ------------------------------------------------------------------------------- jobs
    def job(self, job_id: int) -> Job:
        return Job(self, self.request_json("GET", f"/v1/jobs/{job_id}"))

    def jobs(
        self, *, status: str | None = None, task_id: str | None = None, limit: int = 50
    ) -> list[Job]:
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = status
        if task_id:
            params["task_id"] = task_id
        return [Job(self, j) for j in self.request_json("GET", "/v1/jobs", params=params)["items"]]

    def cancel_job(self, job_id: int) -> Job:
        return Job(self, self.request_json("POST", f"/v1/jobs/{job_id}/cancel"))

    def start_recompute(
        self,
        *,
        task_ids: list[str] | None = None,
        model: str | None = None,
        kinds: list[str] | None = None,
        stale_only: bool = False,
        dry_run: bool = False,
    ) -> Job:
        """Order a recompute job and return it at once; once it succeeded, ``job.result`` is
        {queued: [...], skipped: [...]} (``job.wait()`` blocks until then)."""
        return start_recompute(
            self,
            task_ids=task_ids,
            model=model,
            kinds=kinds,
            stale_only=stale_only,
            dry_run=dry_run,
        )

    def recompute(
        self,
        *,
        task_ids: list[str] | None = None,
        model: str | None = None,
        kinds: list[str] | None = None,
        stale_only: bool = False,
        dry_run: bool = False,
        timeout: float | None = None,
    ) -> dict:
        """Queue one new version per selected basis; returns {queued: [...], skipped: [...]}.

        The registry selects the bases (digesting their inputs for ``stale_only``) in a
        recompute job: this waits for that job, not for the basis jobs it queued (wait for
        those with ``client.job(item["job_id"]).wait()``). ``start_recompute`` returns the
        recompute job without waiting."""
        job = self.start_recompute(
            task_ids=task_ids, model=model, kinds=kinds, stale_only=stale_only, dry_run=dry_run
        )
        return job.wait(timeout=timeout).result

    # ------------------------------------------------------------------------ tokens, runs
    def create_token(self, name: str, scopes: list[str]) -> dict:
        return self.request_json("POST", "/v1/tokens", json={"name": name, "scopes": scopes})

    def tokens(self) -> list[dict]:
        return self.request_json("GET", "/v1/tokens")

    def revoke_token(self, token_id: int) -> dict:
        return self.request_json("DELETE", f"/v1/tokens/{token_id}")

    def create_run(self, **fields: Any) -> dict:
        return self.request_json("POST", "/v1/runs", json=fields)

    def runs(self, *, task_id: str | None = None, method: str | None = None) -> list[dict]:
        params = {k: v for k, v in (("task_id", task_id), ("method", method)) if v}
        return self.request_json("GET", "/v1/runs", params=params)["items"]
