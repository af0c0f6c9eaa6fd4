"""Session-wide real servers (Valkey, SecantusDB), an in-process deployment on
them (tests/local.py) and one deployment of real processes (tests/stack.py).

Tests share a deployment but each makes its own tenant, which isolates its data
as it isolates customers; tests that change settings or kill processes make a
deployment of their own (its own database and Redis prefix): in process when
the settings are the edge's or the worker's, of real processes when the process
is what the test is about.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.embedded import start_mongo, start_valkey
from tests import processes
from tests.local import Local, running_local
from tests.stack import Servers, Stack, Tenant, running_stack
from worker.store.connection import Store

# A test that uses one of these runs real gunicorn or Celery processes (or the
# `dev` command): the end-to-end tier. Every other test runs in process.
PROCESS_FIXTURES = {"deployment", "logs_dir"}


def pytest_configure(config: pytest.Config) -> None:
    processes.mark_this_run()


# Modules whose tests take the longest, longest first (faults 150-180 s, the
# bad-input fuzzing 120 s, `dev` 85 s, the others 45-80 s each in a run of
# bin/test): run first, so the two test processes end together on the many
# short modules rather than one of them finishing a long module alone while
# the other waits. bin/test keeps this order (--no-loadscope-reorder); xdist's
# own takes the modules of most tests first.
LONGEST = (
    "test_faults.py",
    "test_bad_input.py",
    "test_dev.py",
    "test_openapi.py",
    "test_apply.py",
    "test_webhook_isolation.py",
    "test_entry_points.py",
    "test_webhooks.py",
    "test_edge_load.py",
    "test_validation_reference.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)
    # Longest modules first, then those with end-to-end tests, then the rest; a
    # module's tests keep their order (the sort is stable).
    with_e2e = {item.path for item in items if item.get_closest_marker("e2e")}

    def rank(item: pytest.Item) -> int:
        if item.path.name in LONGEST:
            return LONGEST.index(item.path.name)
        return len(LONGEST) + (0 if item.path in with_e2e else 1)

    items.sort(key=rank)


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
def deployment(servers: Servers, logs_dir: Path) -> Iterator[Stack]:
    """The shared deployment of real processes: the edge under gunicorn, a Celery
    worker with beat. Tests that need what a process gives (HTTP as sent, signals,
    faults) take it by this name; a module of the in-process tier overrides
    `stack` but not this."""
    with running_stack(servers, logs_dir) as running:
        yield running


@pytest.fixture(scope="session")
def stack(deployment: Stack) -> Stack:
    return deployment


@pytest.fixture(scope="session")
def local(servers: Servers) -> Iterator[Local]:
    """The in-process tier's deployment: the edge through Flask's test client, the
    worker's services on a thread of this process, the session's real servers."""
    with running_local(servers.settings()) as deployment:
        yield deployment


@pytest.fixture(scope="session")
def guarded(servers: Servers) -> Iterator[Local]:
    """In process, without the allow-private setting: callback URLs and deliveries
    to private addresses are refused, as in production."""
    with running_local(servers.settings(WEBHOOK_ALLOW_PRIVATE="false")) as deployment:
        yield deployment


@pytest.fixture(scope="session")
def guarded_deployment(deployment: Stack) -> Iterator[Stack]:
    """An edge of real processes without the allow-private setting, in front of the
    shared deployment (its database, Redis prefix and worker): fuzzed callback
    URLs are refused at this edge rather than tried, so the fuzzing tests share
    it. A second edge costs a gunicorn start, a whole deployment its workers too."""
    edge = Stack(
        deployment.servers,
        deployment.logs,
        {"WEBHOOK_ALLOW_PRIVATE": "false"},
        name=deployment.name,
        logs_as=deployment.name + "-guarded",
    )
    try:
        edge.start_api()
        yield edge
    finally:
        edge.stop()


@pytest.fixture
def db(stack: Stack) -> Store:
    """The shared deployment's store, for reading and arranging what a test checks."""
    return stack.db


@pytest.fixture
def tenant(stack: Stack) -> Tenant:
    return stack.new_tenant()


@pytest.fixture
def other_tenant(stack: Stack) -> Tenant:
    return stack.new_tenant()
