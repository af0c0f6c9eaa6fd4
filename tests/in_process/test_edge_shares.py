"""A tenant's share of the edge, in process on the real servers: result streams
read the store a page at a time, streams and uploads are capped per tenant,
a body costs rate-limit units by its size, and every store call has a deadline
(a hung store is a 503 with Retry-After, not a request held)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pymongo import MongoClient, monitoring

from cli.embedded import Server
from tests.in_process.test_batches import JSONL, finished_batch, jsonl, submit
from tests.local import Local, LocalTenant, running_local
from tests.stack import Servers
from worker.services import batches
from worker.store.connection import Store

UNIT = 1024


@pytest.fixture(scope="module")
def shared(servers: Servers) -> Iterator[Local]:
    with running_local(
        servers.settings(
            MAX_STREAMS_PER_TENANT="1",
            MAX_UPLOADS_PER_TENANT="1",
            RATE_LIMIT="100000/hour",
            RATE_LIMIT_BYTES_PER_UNIT=str(UNIT),
            CHUNK_SIZE="3",
            STREAM_STORE_SLOTS="1",
            STORE_DEADLINE_MS="1500",
        )
    ) as deployment:
        yield deployment


@pytest.fixture
def owner(shared: Local) -> LocalTenant:
    return shared.new_tenant()


def finished(owner: LocalTenant, lines: int) -> str:
    data = jsonl([{"custom_id": f"c{i}", "body": {"model": "m"}} for i in range(lines)])
    batch = submit(owner, data)
    assert batch.status_code == 202, batch.text
    finished_batch(owner, batch.json()["id"])
    return str(batch.json()["id"])


class Commands(monitoring.CommandListener):
    """The commands a client sends, with their names."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.seen.append((event.command_name, dict(event.command)))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def test_results_are_read_in_pages_with_no_cursor_held(shared: Local, owner: LocalTenant) -> None:
    batch_id = finished(owner, 20)  # 7 chunks of 3
    listener = Commands()
    client: MongoClient[Any] = MongoClient(shared.settings.mongodb_uri, event_listeners=[listener])
    try:
        store = Store(client=client, db=client[shared.settings.database_name])
        lines = list(batches.iter_results(store, owner.name, batch_id, None))
    finally:
        client.close()
    assert [line["custom_id"] for line in lines] == [f"c{i}" for i in range(20)]
    names = [name for name, _ in listener.seen]
    # A chunk a page, each its own query (and one that finds the end): 8 finds,
    # never a cursor to come back to.
    assert names.count("find") == 8, names
    assert "getMore" not in names and "killCursors" not in names
    for name, command in listener.seen:
        if name == "find":
            assert command["limit"] == 1 and command["sort"] == {"seq": 1}


def test_a_tenants_streams_beyond_its_share_are_429(
    shared: Local, owner: LocalTenant, other_tenant: LocalTenant
) -> None:
    batch_id = finished(owner, 4)
    path = f"/v1/batches/{batch_id}/results"
    auth = {"Authorization": f"Bearer {owner.api_key}"}
    opened, done = threading.Event(), threading.Event()
    statuses: list[int] = []

    def hold() -> None:
        # Its own thread: the open stream keeps its request context there.
        held = shared.client().get(path, headers=auth, buffered=False)
        statuses.append(held.status_code)
        opened.set()
        done.wait(30)
        held.close()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert opened.wait(30)
        assert statuses == [200]
        refused = owner.request("GET", path)
        assert refused.status_code == 429
        assert refused.headers["Retry-After"] == "1"
        assert "result streams and exports at once" in refused.json()["detail"]
        # Another tenant's share is its own.
        theirs = finished(other_tenant, 1)
        assert other_tenant.request("GET", f"/v1/batches/{theirs}/results").status_code == 200
    finally:
        done.set()
        holder.join(30)
    # The stream's end gives its share back.
    assert owner.request("GET", path).status_code == 200


@pytest.fixture(scope="module")
def one_upload(servers: Servers) -> Iterator[Local]:
    """One upload at a time per tenant, and the store's usual deadline: under load
    `shared`'s short one may turn the first upload's writes into a 503."""
    with running_local(servers.settings(MAX_UPLOADS_PER_TENANT="1")) as deployment:
        yield deployment


def test_a_tenants_uploads_beyond_its_share_are_429(one_upload: Local) -> None:
    owner = one_upload.new_tenant()
    reading, go_on = threading.Event(), threading.Event()
    answers: list[Any] = []

    def slow_body() -> Iterator[bytes]:
        yield jsonl([{"body": {"model": "m"}}])
        # Asked for more: the edge is reading the upload, its share is held.
        reading.set()
        go_on.wait(30)
        yield jsonl([{"body": {"model": "m"}}])

    upload = threading.Thread(
        target=lambda: answers.append(
            owner.request("POST", "/v1/batches", data=slow_body(), headers=JSONL)
        )
    )
    upload.start()
    try:
        assert reading.wait(30)
        # While the first upload is read, a second one is refused.
        refused = submit(owner, jsonl([{"body": {"model": "m"}}]))
        assert refused.status_code == 429, refused.text
        assert refused.headers["Retry-After"] == "1"
        assert "batch uploads at once" in refused.json()["detail"]
    finally:
        go_on.set()
        upload.join(30)
    assert answers[0].status_code == 202, answers[0].text
    assert submit(owner, jsonl([{"body": {"model": "m"}}])).status_code == 202


def remaining(answer: Any) -> int:
    return int(answer.headers["RateLimit-Remaining"])


def test_a_body_costs_rate_limit_units_by_its_size(owner: LocalTenant) -> None:
    data = jsonl([{"body": {"model": "m", "name": "x" * 900}} for _ in range(10)])
    assert len(data) > 9 * UNIT
    before = remaining(owner.request("GET", "/v1/models"))
    sent = submit(owner, data)
    assert sent.status_code == 202
    assert before - remaining(sent) == 1 + (len(data) - 1) // UNIT
    # Sent without a length, it costs as much: charged once it has been read.
    before = remaining(sent)
    chunked = owner.request("POST", "/v1/batches", data=iter([data]), headers=JSONL)
    assert chunked.status_code == 202, chunked.text
    after = remaining(owner.request("GET", "/v1/models"))
    assert before - after == 1 + (len(data) - 1) // UNIT + 1


def test_streams_take_few_store_connections_and_wait_no_longer_than_the_deadline(
    shared: Local, owner: LocalTenant
) -> None:
    batch_id = finished(owner, 2)
    slots = shared.db.stream_slots
    assert slots.acquire(timeout=10)  # every slot for long reads busy (there is one)
    try:
        started = time.monotonic()
        answer = owner.request("GET", f"/v1/batches/{batch_id}/results")
        took = time.monotonic() - started
        # Short reads and writes do not wait for those slots.
        created = owner.create({"model": "m"})
    finally:
        slots.release()
    assert answer.status_code == 503, answer.text
    assert answer.headers["Retry-After"]
    assert took < 10, took  # the 1.5 s deadline, with room for a loaded machine
    assert created.status_code == 202
    assert owner.request("GET", f"/v1/batches/{batch_id}/results").status_code == 200


def test_a_hung_store_is_a_503_with_retry_after_within_the_deadline(
    servers: Servers, hung_store: Server
) -> None:
    settings = servers.settings(
        STORE_TIMEOUT_MS="1000", STORE_DEADLINE_MS="1000", AUTH_CACHE_SECONDS="0"
    ).model_copy(update={"mongodb_uri": f"mongodb://127.0.0.1:{hung_store.port}/x"})
    deployment = Local(settings)
    try:
        owner = deployment.new_tenant()
        assert owner.request("GET", "/v1/batches").status_code == 200
        os.kill(hung_store.process.pid, signal.SIGSTOP)
        took = []
        answers = []
        for method, path, body in (
            ("GET", "/v1/batches", None),  # auth's read of the key, on a hung store
            ("POST", "/v1/assistants", {"model": "m"}),
        ):
            started = time.monotonic()
            answers.append(owner.request(method, path, json=body))
            took.append(time.monotonic() - started)
    finally:
        os.kill(hung_store.process.pid, signal.SIGCONT)
        deployment.close()
    assert [answer.status_code for answer in answers] == [503, 503], [a.text for a in answers]
    assert all(answer.headers["Retry-After"] for answer in answers)
    # The 1 s deadline, with room for a loaded machine; without one, pymongo
    # waits on a hung server's socket for as long as it stays hung.
    assert max(took) < 8, took
