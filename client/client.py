"""`Client`: the registry over HTTP (httpx), with a verified, content-addressed basis cache."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from typing import Any

import httpx

from client.cache import BasisCache, default_cache_dir, server_key
from client.credentials import token_from_env
from client.errors import raise_for_response
from client.jobs import Job, start_recompute
from client.retry import IDEMPOTENT_METHODS, RetryPolicy
from client.sources import rows_from
from client.transfer import PulledBasis, download_layer, progress_bar
from client.upload import send_rows
from storage.errors import NotFound
from storage.layout import Layout

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = httpx.Timeout(30.0, read=300.0)
DEFAULT_PART_BYTES = 8 << 20


class Client:
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
    """

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

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
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
        **kw,
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

    def request_json(self, method: str, path: str, **kw) -> Any:
        response = self.request(method, path, **kw)
        return response.json() if response.content else None

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

    # ------------------------------------------------------------------------------ bases
    def compute_basis(
        self,
        task_id: str,
        kind: str = "task",
        *,
        rank: int = 8,
        mode: str = "delta",
        selection: str | list[int] | None = None,
        tasks: list[str] | None = None,
        seed: int = 0,
        executor: str | None = None,
    ) -> Job:
        """Order a basis; returns its Job (``job.wait()`` blocks until it is ready)."""
        body = {"kind": kind, "rank": rank, "mode": mode, "seed": seed}
        for key, value in (("selection", selection), ("tasks", tasks), ("executor", executor)):
            if value is not None:
                body[key] = value
        return Job(self, self.request_json("POST", f"/v1/tasks/{task_id}/bases", json=body))

    def list_bases(self, task_id: str, kind: str | None = None) -> list[dict]:
        out, offset = [], 0
        while True:
            params: dict[str, Any] = {"offset": offset, "limit": 500}
            if kind:
                params["kind"] = kind
            page = self.request_json("GET", f"/v1/tasks/{task_id}/bases", params=params)
            out += page["items"]
            offset += len(page["items"])
            if not page["items"] or offset >= page["total"]:
                return out

    def basis(
        self,
        task_id: str,
        kind: str = "task",
        *,
        version: int | None = None,
        alias: str | None = None,
    ) -> dict:
        """The manifest of a ready basis (layers, shapes, sha256, download paths)."""
        params = _ref_params(version, alias)
        return self.request_json("GET", f"/v1/tasks/{task_id}/bases/{kind}", params=params)

    def basis_version(self, task_id: str, kind: str, version: int) -> dict:
        """One version in any status (pending, running, ready, failed)."""
        return self.request_json("GET", f"/v1/tasks/{task_id}/bases/{kind}/versions/{version}")

    def set_alias(self, task_id: str, kind: str, name: str, version: int) -> dict:
        return self.request_json(
            "PUT", f"/v1/tasks/{task_id}/bases/{kind}/aliases/{name}", json={"version": version}
        )

    def delete_alias(self, task_id: str, kind: str, name: str) -> None:
        self.request("DELETE", f"/v1/tasks/{task_id}/bases/{kind}/aliases/{name}")

    def aliases(self, task_id: str, kind: str) -> list[dict]:
        return self.request_json("GET", f"/v1/tasks/{task_id}/bases/{kind}/aliases")

    def pull_basis(
        self,
        task_id: str,
        kind: str = "task",
        *,
        version: int | None = None,
        alias: str | None = "latest",
        layers: Iterable[str] | None = None,
        local_files_only: bool = False,
        progress: bool = False,
    ) -> PulledBasis:
        """Make a basis available in the local cache and return where its layers are.

        The manifest is revalidated with its ETag (a 304 costs no body); layers are fetched
        only when their sha256 is not yet in the cache, streamed to disk, hashed on the way and
        renamed into place only if the hash matches; an interrupted download resumes from its
        last verified byte with a Range request (If-Range on the layer's sha256 ETag, so a
        changed layer starts over rather than splices), retried as ``retries`` allows.
        `local_files_only=True` (or an unreachable server, when the cache has the basis) uses
        the cache alone.
        """
        ref = f"v{version}" if version is not None else f"@{alias or 'latest'}"
        layers = list(layers) if layers is not None else None
        cached = self.cache.read_ref(self._server, task_id, kind, ref)
        if local_files_only:
            if cached is None:
                raise NotFound(f"{task_id}/{kind} {ref} is not in the cache at {self.cache.root}")
            return self._from_cache(task_id, kind, cached["manifest"], layers, offline=True)
        headers = {"If-None-Match": cached["etag"]} if cached and cached.get("etag") else {}
        # When the cache holds every layer asked for, an unreachable registry costs one retry
        # at most before the cache answers.
        whole = cached is not None and self._in_cache(cached["manifest"], layers)
        try:
            response = self.request(
                "GET",
                f"/v1/tasks/{task_id}/bases/{kind}",
                params=_ref_params(version, alias if version is None else None),
                headers=headers,
                retry=self.retry.with_attempts(min(2, self.retry.attempts)) if whole else None,
            )
        except httpx.TransportError as exc:
            if cached is None:
                raise
            log.warning(
                "registry unreachable (%s); using the cached %s/%s %s", exc, task_id, kind, ref
            )
            return self._from_cache(task_id, kind, cached["manifest"], layers, offline=True)
        if response.status_code == 304:
            manifest, etag = cached["manifest"], cached["etag"]
        else:
            manifest, etag = response.json(), response.headers.get("etag")
            self.cache.write_ref(self._server, task_id, kind, ref, etag, manifest)
            self.cache.write_ref(
                self._server, task_id, kind, f"v{manifest['version']}", None, manifest
            )
        return self._from_cache(task_id, kind, manifest, layers, offline=False, progress=progress)

    def load_basis(
        self,
        task_id: str,
        kind: str = "task",
        *,
        version: int | None = None,
        alias: str | None = "latest",
        layers: Iterable[str] | None = None,
        local_files_only: bool = False,
    ) -> dict[str, Any]:
        """Pull a basis and return {layer: torch.Tensor (D, k) float32}, memory-mapped from the
        cache (copy-on-write: writing to a tensor never changes the cached file)."""
        import torch

        pulled = self.pull_basis(
            task_id,
            kind,
            version=version,
            alias=alias,
            layers=layers,
            local_files_only=local_files_only,
        )
        return {name: torch.from_numpy(pulled.array(name)) for name in pulled.files}

    def _in_cache(self, manifest: dict, layers: Iterable[str] | None) -> bool:
        infos = {i["name"]: i for i in manifest["layers"]}
        wanted = list(infos) if layers is None else list(layers)
        return all(
            n in infos and self.cache.has_blob(infos[n]["sha256"], infos[n]["nbytes"])
            for n in wanted
        )

    def _from_cache(
        self,
        task_id: str,
        kind: str,
        manifest: dict,
        layers: Iterable[str] | None,
        *,
        offline: bool,
        progress: bool = False,
    ) -> PulledBasis:
        infos = {i["name"]: i for i in manifest["layers"]}
        wanted = list(infos) if layers is None else list(layers)
        unknown = [name for name in wanted if name not in infos]
        if unknown:
            raise NotFound(f"{task_id}/{kind} v{manifest['version']} has no layers {unknown}")
        files = {}
        missing = [
            n for n in wanted if not self.cache.has_blob(infos[n]["sha256"], infos[n]["nbytes"])
        ]
        if missing and offline:
            raise NotFound(f"layers {missing} of {task_id}/{kind} are not in the cache")
        with progress_bar(progress and bool(missing), f"pull {task_id}/{kind}") as bar:
            for name in wanted:
                info = infos[name]
                if name in missing:
                    download_layer(
                        self._http,
                        self.base_url,
                        self._headers(),
                        self.cache,
                        info,
                        bar,
                        self.retry,
                    )
                files[name] = self.cache.blob_path(info["sha256"])
        return PulledBasis(task_id, kind, int(manifest["version"]), manifest, files)

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


def _ref_params(version: int | None, alias: str | None) -> dict[str, Any]:
    if version is not None:
        return {"version": version}
    return {"alias": alias} if alias else {}
