"""The trajectory store on fsspec's `memory://` filesystem, through zarr's FsspecStore.

It stands in for every remote object store (s3://, gs://): the same Location and zarr code
path, without a server.
"""

from __future__ import annotations

import uuid

import fsspec
import pytest
from zarr.storage import FsspecStore

from storage.objects import Location, zarr_store
from tests.storage.conformance import TrajectoryStoreSuite


class TestMemoryFilesystem(TrajectoryStoreSuite):
    @pytest.fixture
    def url(self):
        # The memory filesystem is process-wide: give every test its own prefix and clean up.
        prefix = f"tinysub-test-{uuid.uuid4().hex}"
        yield f"memory://{prefix}/traj"
        fs = fsspec.filesystem("memory")
        if fs.exists(f"/{prefix}"):
            fs.rm(f"/{prefix}", recursive=True)

    def test_goes_through_the_fsspec_store(self, url, tiny_layout):
        loc = Location.from_url(url)
        assert not loc.is_local
        store = zarr_store(loc)
        assert isinstance(store, FsspecStore)
        self.create(url, tiny_layout)
        # The objects really are in the memory filesystem, under the URL's path.
        assert fsspec.filesystem("memory").exists(loc.path("layer.0", "zarr.json"))
