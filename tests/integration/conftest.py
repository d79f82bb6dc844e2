"""Real servers shared by the integration tests (tests/servers.py), once per session."""

from __future__ import annotations

import pytest

from services.topology import postgres_unavailable
from tests import servers

local_s3 = servers.local_s3
local_postgres = servers.local_postgres


@pytest.fixture
def postgres(local_postgres):
    if local_postgres is None:
        pytest.skip(f"PostgreSQL cannot run here: {postgres_unavailable()}")
    return local_postgres
