"""URL-addressed locations: local paths and fsspec URLs through one code path.

A `Location` wraps an fsspec filesystem and a root path. Small JSON documents (manifests, row
commit markers) are written atomically: on a local disk by writing a temporary file, fsyncing it
and renaming it over the target; on object stores a single PUT is already atomic. The Zarr arrays
themselves are opened through `zarr_store()`, which uses zarr's LocalStore (atomic writes) for
local paths and its FsspecStore otherwise.

zarr renames chunk files into place without fsync, so on a local disk a power cut can leave a
renamed chunk empty or its directory entry missing. `Location.sync()` fsyncs given files and
every directory on their way up to the root; a store calls it before it writes the marker that
makes those files part of a committed row. Directories created for a small JSON document have
their parents fsynced too, or the document could vanish with its directory. On object stores
none of this applies: a PUT is durable once it returns, and there is nothing to fsync.

Listings are never served from fsspec's directory cache: s3fs (and other object-store
filesystems) remember a prefix's listing per process, and answer `ls` and `exists` from it, so
a registry would not see a row another process committed after its first look.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import posixpath
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import fsspec
from fsspec.implementations.local import LocalFileSystem
from zarr.storage import FsspecStore, LocalStore

from storage.errors import NotFound, StorageError, storage_error

if TYPE_CHECKING:
    from zarr.abc.store import Store


@dataclass
class Location:
    url: str
    fs: fsspec.AbstractFileSystem
    root: str
    storage_options: dict[str, Any]

    @classmethod
    def from_url(
        cls, url: str | os.PathLike[str], storage_options: dict[str, Any] | None = None
    ) -> Location:
        url = os.fspath(url)
        opts = dict(storage_options or {})
        root: str  # fsspec is untyped: url_to_fs gives (filesystem, path)
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
        return cast(bool, self.fs.exists(self._fresh(self.path(*parts))))

    def read_bytes(self, *parts: str) -> bytes:
        try:
            return cast(bytes, self.fs.cat_file(self.path(*parts)))
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
                _makedirs_durable(os.path.dirname(target))
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

    def durable_base(self) -> str:
        """The nearest directory above the root that exists now (local paths only): creating
        the root (zarr re-creates it on mode "w") changes the entries of the directories from
        here down, so `sync(..., base=durable_base())` taken before makes the root durable."""
        path = os.path.dirname(self.root)
        while not os.path.isdir(path):
            path = os.path.dirname(path)
        return path

    def sync(self, keys: Iterable[str] = (), *, base: str | None = None) -> None:
        """Make files under the root durable (fsync), then every directory from theirs up to
        the root, or up to `base` (see `durable_base`). Files that do not exist are skipped:
        zarr stores no chunk equal to the fill value, and its removal is in the directory.

        Object stores need nothing: a PUT is durable once it returns, and fsync has no meaning
        there, so this is a no-op for every non-local filesystem.
        """
        if not self.is_local:
            return
        top = base or self.root
        dirs = {self.root, *_parents(self.root, top)}
        files = [self.path(*key.split("/")) for key in keys]
        for path in files:
            dirs.update(_parents(path, self.root))
        try:
            _fsync_files(files)
            # Deepest first: a parent is flushed after the entries below it were.
            for path in sorted(dirs, key=lambda d: d.count("/"), reverse=True):
                _fsync_dir(path)
        except OSError as exc:
            raise storage_error(f"could not make {self.url} durable (fsync)", exc) from exc


def _parents(path: str, top: str) -> list[str]:
    """The directories from `path`'s own up to `top` (inclusive), deepest first."""
    out = []
    here = os.path.dirname(path)
    while here.startswith(top) and len(here) >= len(top):
        out.append(here)
        if here == top:
            break
        here = os.path.dirname(here)
    return out


def _makedirs_durable(path: str) -> None:
    """os.makedirs, with the parent of every directory it creates fsynced: a new directory is
    only on the disk once its entry in the parent is."""
    created = []
    here = path
    while not os.path.isdir(here):
        created.append(here)
        here = os.path.dirname(here)
    os.makedirs(path, exist_ok=True)
    for new in reversed(created):
        _fsync_dir(os.path.dirname(new))


def _fsync_files(paths: list[str]) -> None:
    """fsync every file, several at a time: the filesystem commits concurrent fsyncs in one
    journal transaction, which makes a row of many chunks several times cheaper to sync."""
    if len(paths) <= 1:
        for path in paths:
            _fsync_file(path)
        return
    with ThreadPoolExecutor(max_workers=min(_SYNC_THREADS, len(paths))) as pool:
        list(pool.map(_fsync_file, paths))  # list(): the first failure is raised here


def _fsync_file(path: str) -> None:
    # fsync through a fresh descriptor flushes the inode's data whoever wrote it (zarr did).
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_SYNC_THREADS = 16

# Filesystems that cannot fsync a directory say so with these; anything else (EIO) is a failure.
_NO_DIR_FSYNC = {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF, errno.EISDIR}


def _fsync_dir(path: str) -> None:
    # A rename, creation or removal is durable only once its directory entry is flushed.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _NO_DIR_FSYNC:
            raise
    finally:
        os.close(fd)


def zarr_store(loc: Location, *, read_only: bool = False) -> Store:
    """A zarr v3 store for a location (LocalStore for paths, FsspecStore for URLs)."""
    if loc.is_local:
        return LocalStore(loc.root, read_only=read_only)
    return FsspecStore.from_url(
        loc.url, storage_options=loc.storage_options or None, read_only=read_only
    )
