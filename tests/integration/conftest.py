"""Real servers shared by the integration tests (tests/servers.py), once per session."""

from __future__ import annotations

import pytest

from tests import servers
from tests.promised import skip_missing
from tests.topology import postgres_unavailable

local_s3 = servers.local_s3
local_postgres = servers.local_postgres


@pytest.fixture
def postgres(local_postgres):
    if local_postgres is None:
        skip_missing("postgres", postgres_unavailable())
    return local_postgres
