"""Session fixtures for real servers (S3 via moto, PostgreSQL), used by tests/integration and
by the storage backends' tests. Each stops its processes in a `finally`. Where one cannot run,
the tests that need it skip through tests/promised.py, which fails the run unless
TINYSUB_ALLOW_SKIPS names the component."""

from __future__ import annotations

import pytest

from tests.promised import import_or_skip_missing
from tests.topology import LocalPostgres, LocalS3, postgres_unavailable


@pytest.fixture(scope="session")
def local_s3(tmp_path_factory):
    import_or_skip_missing("s3", "moto.server", "moto[server] is not installed (dev extra)")
    import_or_skip_missing("s3", "s3fs", "s3fs is not installed (s3 extra)")
    s3 = LocalS3(tmp_path_factory.mktemp("s3"), bucket="tinysub")
    try:
        yield s3.start()
    finally:
        s3.stop()


@pytest.fixture(scope="session")
def local_postgres(tmp_path_factory):
    """A PostgreSQL server, or None when this machine cannot run one (see
    `postgres_unavailable`; the `postgres` fixture of tests/integration then skips with that
    reason, as a missing promised component)."""
    if postgres_unavailable():
        yield None
        return
    pg = LocalPostgres(tmp_path_factory.mktemp("postgres"))
    try:
        yield pg.start()
    finally:
        pg.stop()
