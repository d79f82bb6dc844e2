"""The registry's bases through `Client`: order, list, alias, pull into the cache, load.

`pull_basis` and `load_basis` take a task ID and kind (with a version or an alias), or one
`client.refs.BasisRef`; `resolve_basis` turns a ref into the exact version and per-layer sha256
the registry serves. `Client` inherits these; use it rather than this class.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import httpx

from client.http import RegistryHTTP
from client.jobs import Job
from client.refs import BasisRef
from client.transfer import PulledBasis, download_layer, progress_bar
from storage.errors import NotFound

log = logging.getLogger(__name__)


class BasisAPI(RegistryHTTP):
    """Bases: compute, list, manifests, aliases, and the verified, content-addressed pull."""

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

    def resolve_basis(self, ref: BasisRef) -> BasisRef:
        """The version and per-layer sha256 the registry serves for `ref` (its alias or latest
        now), checked against whatever `ref` already pins."""
        manifest = self.basis(ref.task, ref.kind, version=ref.version, alias=ref.alias)
        return ref.check_manifest(manifest)

    def pull_basis(
        self,
        task_id: str | BasisRef,
        kind: str = "task",
        *,
        version: int | None = None,
        alias: str | None = "latest",
        layers: Iterable[str] | None = None,
        local_files_only: bool = False,
        progress: bool = False,
    ) -> PulledBasis:
        """Make a basis available in the local cache and return where its layers are.

        The basis is named by task ID and kind (with a version, else an alias), or by one
        `BasisRef` in place of the task ID, which then gives the kind, version and alias too; a
        ref that records layer hashes is refused if the registry serves other bytes (so a run
        record re-pulls exactly what it was trained in). ``BasisRef.from_manifest(pulled.manifest)``
        is the resolved ref.

        The manifest is revalidated with its ETag (a 304 costs no body); layers are fetched
        only when their sha256 is not yet in the cache, streamed to disk, hashed on the way and
        renamed into place only if the hash matches; an interrupted download resumes from its
        last verified byte with a Range request (If-Range on the layer's sha256 ETag, so a
        changed layer starts over rather than splices), retried as ``retries`` allows.
        `local_files_only=True` (or an unreachable server, when the cache has the basis) uses
        the cache alone.
        """
        # Long by nature: a public call's flags and docs; the body is one cache-then-ETag fetch.
        want = task_id if isinstance(task_id, BasisRef) else None
        if want is not None:
            task_id, kind, version, alias = want.task, want.kind, want.version, want.alias
        ref = f"v{version}" if version is not None else f"@{alias or 'latest'}"
        layers = list(layers) if layers is not None else None
        cached = self.cache.read_ref(self._server, task_id, kind, ref)
        if local_files_only:
            if cached is None:
                raise NotFound(f"{task_id}/{kind} {ref} is not in the cache at {self.cache.root}")
            return self._checked(want, task_id, kind, cached["manifest"], layers, offline=True)
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
            return self._checked(want, task_id, kind, cached["manifest"], layers, offline=True)
        if response.status_code == 304:
            manifest, etag = cached["manifest"], cached["etag"]
        else:
            manifest, etag = response.json(), response.headers.get("etag")
            self.cache.write_ref(self._server, task_id, kind, ref, etag, manifest)
            self.cache.write_ref(
                self._server, task_id, kind, f"v{manifest['version']}", None, manifest
            )
        return self._checked(
            want, task_id, kind, manifest, layers, offline=False, progress=progress
        )

    def load_basis(
        self,
        task_id: str | BasisRef,
        kind: str = "task",
        *,
        version: int | None = None,
        alias: str | None = "latest",
        layers: Iterable[str] | None = None,
        local_files_only: bool = False,
    ) -> dict[str, Any]:
        """Pull a basis (task ID and kind, or a `BasisRef`) and return {layer: torch.Tensor
        (D, k) float32}, memory-mapped from the cache (copy-on-write: writing to a tensor never
        changes the cached file)."""
        import torch  # noqa: PLC0415 - torch: slow; client and CLI must not need it

        pulled = self.pull_basis(
            task_id,
            kind,
            version=version,
            alias=alias,
            layers=layers,
            local_files_only=local_files_only,
        )
        return {name: torch.from_numpy(pulled.array(name)) for name in pulled.files}

    def _checked(
        self,
        want: BasisRef | None,
        task_id: str,
        kind: str,
        manifest: dict,
        layers: list[str] | None,
        *,
        offline: bool,
        progress: bool = False,
    ) -> PulledBasis:
        """`_from_cache`, after checking the manifest against a pinned ref: nothing is
        downloaded or handed out for a basis whose recorded hashes differ."""
        if want is not None:
            want.check_manifest(manifest)
        return self._from_cache(task_id, kind, manifest, layers, offline=offline, progress=progress)

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


def _ref_params(version: int | None, alias: str | None) -> dict[str, Any]:
    if version is not None:
        return {"version": version}
    return {"alias": alias} if alias else {}
