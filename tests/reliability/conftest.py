from __future__ import annotations

import fsspec
import pytest

from tests.reliability.quota_fs import QuotaFileSystem
from tests.services.helpers import small_layout


@pytest.fixture
def layout():
    return small_layout()


@pytest.fixture
def quota(tmp_path):
    """A volume with a 4 MB quota at quota://..., and a way to fill it up to `leave` bytes."""
    fsspec.register_implementation("quota", QuotaFileSystem, clobber=True)
    root = tmp_path / "volume"
    options = {"root": str(root), "quota_bytes": 4_000_000}

    class Volume:
        def __init__(self) -> None:
            self.root, self.options = root, options
            self.filler = root / "filler.bin"

        def fill(self, leave: int) -> None:
            """Take all free space but `leave` bytes (a full disk, minus a little)."""
            from tests.reliability.quota_fs import used_bytes

            root.mkdir(parents=True, exist_ok=True)
            self.filler.unlink(missing_ok=True)
            self.filler.write_bytes(b"\0" * (options["quota_bytes"] - used_bytes(root) - leave))

        def free(self) -> None:
            self.filler.unlink(missing_ok=True)

    yield Volume()
    QuotaFileSystem.clear_instance_cache()
