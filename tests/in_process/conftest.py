"""The in-process tier: here `stack`, `tenant`, `other_tenant` and `db` are the
in-process deployment's (tests/local.py). A test that needs real processes
(HTTP exactly as sent, gunicorn's limits) takes `deployment` instead."""

from __future__ import annotations

import pytest

from tests.local import Local, LocalTenant
from worker.store.connection import Store


@pytest.fixture(scope="session")
def stack(local: Local) -> Local:
    return local


@pytest.fixture
def tenant(local: Local) -> LocalTenant:
    return local.new_tenant()


@pytest.fixture
def other_tenant(local: Local) -> LocalTenant:
    return local.new_tenant()


@pytest.fixture
def db(local: Local) -> Store:
    return local.db
