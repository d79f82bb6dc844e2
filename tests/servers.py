"""Session fixtures for real servers (S3 via moto, PostgreSQL), used by tests/integration and
by the storage backends' tests. Each stops its processes in a `finally`."""

from __future__ import annotations

import pytest

from services.topology import LocalPostgres, LocalS3, postgres_unavailable


@pytest.fixture(scope="session")
def local_s3(tmp_path_factory):
    pytest.importorskip("moto.server", reason="moto[server] is not installed (dev extra)")
    pytest.importorskip("s3fs", reason="s3fs is not installed (s3 extra)")
    s3 = LocalS3(tmp_path_factory.mktemp("s3"), bucket="tinysub")
    try:
        yield s3.start()
    finally:
        s3.stop()


@pytest.fixture(scope="session")
def local_postgres(tmp_path_factory):
    """A PostgreSQL server, or None when this machine cannot run one (see
    `postgres_unavailable`; tests that need it skip with that reason)."""
    if postgres_unavailable():
        yield None
        return
    pg = LocalPostgres(tmp_path_factory.mktemp("postgres"))
    try:
        yield pg.start()
    finally:
        pg.stop()
