"""The trajectory store on S3 (s3fs against moto's S3 server in its own process): the whole
conformance suite, through zarr's FsspecStore and s3fs's async filesystem.

Credentials and the endpoint come from AWS_* environment variables here (as in the containers
of docker-compose.yml), so the suite's plain `TrajectoryStore.create(url)` calls reach the
server; test_s3_storage_options.py covers explicit fsspec storage options.
"""

from __future__ import annotations

import uuid

import pytest
from zarr.storage import FsspecStore

from storage.objects import Location, zarr_store
from tests import servers
from tests.storage.conformance import TrajectoryStoreSuite

local_s3 = servers.local_s3


class TestS3(TrajectoryStoreSuite):
    @pytest.fixture(autouse=True)
    def _s3_env(self, local_s3, monkeypatch):
        for name, value in local_s3.env.items():
            monkeypatch.setenv(name, value)

    @pytest.fixture
    def url(self, local_s3):
        url = f"s3://{local_s3.bucket}/conformance-{uuid.uuid4().hex}/traj"
        yield url
        Location.from_url(url).delete(recursive=True)

    def test_goes_through_the_fsspec_store(self, url, tiny_layout):
        import s3fs

        loc = Location.from_url(url)
        assert isinstance(loc.fs, s3fs.S3FileSystem) and loc.fs.async_impl
        assert isinstance(zarr_store(loc), FsspecStore)
        self.create(url, tiny_layout)
        assert loc.fs.exists(loc.path("layer.0", "zarr.json"))
