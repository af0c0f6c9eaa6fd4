"""Session-wide real servers (Valkey, SecantusDB) and one running deployment.

Tests share the deployment but each makes its own tenant, which isolates its
data as it isolates customers; tests that change settings or kill processes
start a deployment of their own (its own database and Redis prefix).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.embedded import start_mongo, start_valkey
from tests import processes
from tests.stack import Servers, Stack, Tenant, running_stack


def pytest_configure(config: pytest.Config) -> None:
    processes.mark_this_run()


def pytest_unconfigure(config: pytest.Config) -> None:
    left = processes.end_the_rest()
    if left:
        # Each is a test's leak (a fixture's stop should have ended it): say so.
        print(f"\nended {len(left)} processes the tests left running: {sorted(left)}")


@pytest.fixture(scope="session")
def logs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    data = tmp_path_factory.mktemp("servers")
    valkey = start_valkey(data / "valkey")
    mongo = start_mongo(data / "mongo")
    try:
        yield Servers(mongo=mongo, valkey=valkey)
    finally:
        mongo.stop()
        valkey.stop()


@pytest.fixture(scope="session")
def stack(servers: Servers, logs_dir: Path) -> Iterator[Stack]:
    with running_stack(servers, logs_dir) as deployment:
        yield deployment


@pytest.fixture
def tenant(stack: Stack) -> Tenant:
    return stack.new_tenant()


@pytest.fixture
def other_tenant(stack: Stack) -> Tenant:
    return stack.new_tenant()
