from __future__ import annotations

import pytest

from tests.services.helpers import api_client, make_app, small_layout


@pytest.fixture
def layout():
    return small_layout()


@pytest.fixture
def app(tmp_path):
    return make_app(tmp_path)


@pytest.fixture
def api(app):
    return api_client(app, "admin")
