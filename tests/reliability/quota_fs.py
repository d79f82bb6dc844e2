"""A disk with a quota, as an fsspec filesystem: `quota://<path>` is `<root>/<path>` on the
local disk, and a write that would take the bytes under `root` past `quota_bytes` fails with
OSError(ENOSPC), as a full volume does. The usage is measured on disk at each write, so every
thread and handle sees the same full disk (fsspec caches filesystem instances per thread).

    fsspec.register_implementation("quota", QuotaFileSystem)
    Location.from_url("quota://store/x", {"root": "/tmp/vol", "quota_bytes": 4096})

Not a LocalFileSystem subclass on purpose: tinysub then goes through zarr's FsspecStore and
`pipe_file`, the code path of object stores.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import shutil

from fsspec import AbstractFileSystem


def used_bytes(root: str) -> int:
    total = 0
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            with contextlib.suppress(FileNotFoundError):  # removed while counted
                total += os.path.getsize(os.path.join(dirpath, name))
    return total


class _Writer(io.BytesIO):
    """Buffers a file and stores it on close, if it fits (objects are all-or-nothing)."""

    def __init__(self, fs: QuotaFileSystem, path: str) -> None:
        super().__init__()
        self.fs, self.path = fs, path

    def close(self) -> None:
        if not self.closed:
            data = self.getvalue()
            super().close()
            self.fs.pipe_file(self.path, data)


class QuotaFileSystem(AbstractFileSystem):
    protocol = "quota"
    root_marker = ""

    def __init__(self, root: str, quota_bytes: int, **kwargs) -> None:
        kwargs.pop("asynchronous", None)  # zarr asks; it wraps sync filesystems itself
        super().__init__(**kwargs)
        os.makedirs(root, exist_ok=True)
        self.root = os.path.abspath(root)
        self.quota_bytes = int(quota_bytes)

    @classmethod
    def _strip_protocol(cls, path):
        path = path[len("quota://") :] if path.startswith("quota://") else path
        return path.strip("/")

    def _real(self, path: str) -> str:
        return os.path.join(self.root, self._strip_protocol(path))

    # ------------------------------------------------------------------------------ reading
    def info(self, path, **kwargs):
        real = self._real(path)
        if not os.path.exists(real):
            raise FileNotFoundError(path)
        kind = "directory" if os.path.isdir(real) else "file"
        return {"name": self._strip_protocol(path), "size": os.path.getsize(real), "type": kind}

    def ls(self, path, detail=True, **kwargs):
        real = self._real(path)
        if not os.path.exists(real):
            raise FileNotFoundError(path)
        if not os.path.isdir(real):
            entries = [self.info(path)]
        else:
            base = self._strip_protocol(path)
            entries = [
                self.info(f"{base}/{name}" if base else name) for name in sorted(os.listdir(real))
            ]
        return entries if detail else [e["name"] for e in entries]

    def cat_file(self, path, start=None, end=None, **kwargs):
        try:
            with open(self._real(path), "rb") as f:
                data = f.read()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise FileNotFoundError(path) from exc
        return data[start:end]

    # ------------------------------------------------------------------------------ writing
    def pipe_file(self, path, value, mode="overwrite", **kwargs):
        real = self._real(path)
        old = os.path.getsize(real) if os.path.isfile(real) else 0
        if used_bytes(self.root) - old + len(value) > self.quota_bytes:
            raise OSError(errno.ENOSPC, "No space left on device", path)
        os.makedirs(os.path.dirname(real), exist_ok=True)
        tmp = f"{real}.part"
        with open(tmp, "wb") as f:
            f.write(value)
        os.replace(tmp, real)

    def _open(self, path, mode="rb", *args, **kwargs):
        if "r" in mode:
            return io.BytesIO(self.cat_file(path))
        return _Writer(self, path)

    def mkdir(self, path, create_parents=True, **kwargs):
        os.makedirs(self._real(path), exist_ok=True)

    def makedirs(self, path, exist_ok=False):
        os.makedirs(self._real(path), exist_ok=exist_ok)

    def rm_file(self, path):
        os.remove(self._real(path))

    def rm(self, path, recursive=False, maxdepth=None):
        paths = path if isinstance(path, list) else [path]
        for p in paths:
            real = self._real(p)
            if os.path.isdir(real):
                if not recursive:
                    raise IsADirectoryError(p)
                shutil.rmtree(real)
            elif os.path.exists(real):
                os.remove(real)
            else:
                raise FileNotFoundError(p)
