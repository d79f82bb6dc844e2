"""The client's content-addressed cache of basis layers.

    <cache_dir>/blobs/<sha256>                      a layer's raw float32 bytes, verified
    <cache_dir>/blobs/<sha256>.incomplete           a download in progress (resumed by Range)
    <cache_dir>/refs/<server>/<task>/<kind>/<ref>.json   {etag, manifest} for "v3" or "@latest"

A blob is named by its sha256, so a layer shared by two versions (or two servers) is stored
once, and a blob is only ever renamed into place after its hash matched.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from pathlib import Path
from typing import Any

from storage.errors import InvalidInput

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SAFE = re.compile(r"^[A-Za-z0-9@][A-Za-z0-9._@-]{0,127}$")


def default_cache_dir() -> Path:
    env = os.environ.get("TINYSUB_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "tinysub"


def server_key(base_url: str) -> str:
    """A directory name for a server: readable host part plus a hash of the full URL."""
    host = re.sub(r"[^A-Za-z0-9.-]+", "_", base_url.split("://")[-1]).strip("_")[:48]
    return f"{host}-{hashlib.sha256(base_url.rstrip('/').encode()).hexdigest()[:12]}"


def _safe(part: str) -> str:
    if not _SAFE.fullmatch(part) or ".." in part:
        raise InvalidInput(f"{part!r} cannot be used as a cache path component")
    return part


class BasisCache:
    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def blob_path(self, sha256: str) -> Path:
        if not _SHA256.fullmatch(sha256):
            raise InvalidInput(f"{sha256!r} is not a sha256 hex digest")
        return self.root / "blobs" / sha256

    def has_blob(self, sha256: str, nbytes: int) -> bool:
        path = self.blob_path(sha256)
        return path.is_file() and path.stat().st_size == nbytes

    def ref_path(self, server: str, task_id: str, kind: str, ref: str) -> Path:
        return (
            self.root / "refs" / _safe(server) / _safe(task_id) / _safe(kind) / f"{_safe(ref)}.json"
        )

    def read_ref(self, server: str, task_id: str, kind: str, ref: str) -> dict[str, Any] | None:
        path = self.ref_path(server, task_id, kind, ref)
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def write_ref(
        self, server: str, task_id: str, kind: str, ref: str, etag: str | None, manifest: dict
    ) -> None:
        path = self.ref_path(server, task_id, kind, ref)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_text(json.dumps({"etag": etag, "manifest": manifest}, sort_keys=True))
        os.replace(tmp, path)
