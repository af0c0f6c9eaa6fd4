"""The in-process tier: here `stack`, `tenant`, `other_tenant` and `db` are the
in-process deployment's (tests/local.py). A test that needs real processes
(HTTP exactly as sent, gunicorn's limits) takes `deployment` instead."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.embedded import Server, start_mongo
from tests.local import Local, LocalTenant
from tests.stack import Servers
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


@pytest.fixture
def hung_store(tmp_path: Path) -> Iterator[Server]:
    """A MongoDB-compatible server of the test's own, which the test may SIGSTOP
    (a store that hangs); it is let go and stopped after."""
    server = start_mongo(tmp_path / "mongo")
    try:
        yield server
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
        server.stop()


@pytest.fixture
def paused(servers: Servers) -> Iterator[Local]:
    """A deployment of the test's own whose worker serves its queues only within
    `paused.worker.running()` (or when the test runs it)."""
    own = Local(servers.settings())
    try:
        yield own
    finally:
        own.close()
