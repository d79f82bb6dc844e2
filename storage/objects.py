"""URL-addressed locations: local paths and fsspec URLs through one code path.

A `Location` wraps an fsspec filesystem and a root path. Small JSON documents (manifests, row
commit markers) are written atomically: on a local disk by writing a temporary file, fsyncing it
and renaming it over the target; on object stores a single PUT is already atomic. The Zarr arrays
themselves are opened through `zarr_store()`, which uses zarr's LocalStore (atomic writes) for
local paths and its FsspecStore otherwise.

Listings are never served from fsspec's directory cache: s3fs (and other object-store
filesystems) remember a prefix's listing per process, and answer `ls` and `exists` from it, so
a registry would not see a row another process committed after its first look.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import uuid
from dataclasses import dataclass
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from storage.errors import NotFound, StorageError, storage_error


@dataclass
class Location:
    url: str
    fs: fsspec.AbstractFileSystem
    root: str
    storage_options: dict[str, Any]

    @classmethod
    def from_url(
        cls, url: str | os.PathLike, storage_options: dict[str, Any] | None = None
    ) -> Location:
        url = os.fspath(url)
        opts = dict(storage_options or {})
        fs, root = fsspec.core.url_to_fs(url, **opts)
        if isinstance(fs, LocalFileSystem):
            root = os.path.abspath(root)
            url = root
        return cls(url=url, fs=fs, root=root.rstrip("/"), storage_options=opts)

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts) if parts else self.root

    def child(self, *parts: str) -> Location:
        sub = "/".join(parts)
        url = os.path.join(self.url, *parts) if self.is_local else f"{self.url.rstrip('/')}/{sub}"
        return Location(
            url=url, fs=self.fs, root=self.path(*parts), storage_options=self.storage_options
        )

    def exists(self, *parts: str) -> bool:
        return self.fs.exists(self._fresh(self.path(*parts)))

    def read_bytes(self, *parts: str) -> bytes:
        try:
            return self.fs.cat_file(self.path(*parts))
        except FileNotFoundError as exc:
            raise NotFound(f"{self.path(*parts)} does not exist") from exc

    def read_json(self, *parts: str) -> Any:
        raw = self.read_bytes(*parts)
        try:
            return json.loads(raw)
        except json.JSONDecodeError as exc:
            raise StorageError(f"{self.path(*parts)} is not valid JSON: {exc}") from exc

    def write_bytes_atomic(self, data: bytes, *parts: str) -> None:
        target = self.path(*parts)
        tmp = f"{target}.tmp-{uuid.uuid4().hex}"
        try:
            if self.is_local:
                os.makedirs(os.path.dirname(target), exist_ok=True)
                try:
                    with open(tmp, "wb") as f:
                        f.write(data)
                        f.flush()
                        os.fsync(f.fileno())
                    os.replace(tmp, target)
                except BaseException:
                    with contextlib.suppress(OSError):  # a full disk must not keep the debris
                        os.unlink(tmp)
                    raise
                _fsync_dir(os.path.dirname(target))
            else:
                self.fs.pipe_file(target, data)
        except OSError as exc:
            raise storage_error(f"could not write {target}", exc) from exc

    def write_json_atomic(self, obj: Any, *parts: str) -> None:
        self.write_bytes_atomic(json.dumps(obj, indent=1, sort_keys=True).encode(), *parts)

    def list(self, *parts: str) -> list[str]:
        """Base names directly under a prefix; empty if it does not exist."""
        try:
            entries = self.fs.ls(self._fresh(self.path(*parts)), detail=False)
        except FileNotFoundError:
            return []
        return sorted(posixpath.basename(e.rstrip("/")) for e in entries)

    def _fresh(self, path: str) -> str:
        """`path`, with any cached listing of it and of its parents dropped first."""
        if not self.is_local:
            self.fs.invalidate_cache(path)
        return path

    def delete(self, *parts: str, recursive: bool = False) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self.path(*parts), recursive=recursive)


def _fsync_dir(path: str) -> None:
    # The rename is durable only once its directory entry is flushed.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def zarr_store(loc: Location, *, read_only: bool = False):
    """A zarr v3 store for a location (LocalStore for paths, FsspecStore for URLs)."""
    from zarr.storage import FsspecStore, LocalStore

    if loc.is_local:
        return LocalStore(loc.root, read_only=read_only)
    return FsspecStore.from_url(
        loc.url, storage_options=loc.storage_options or None, read_only=read_only
    )
