"""Batch chunks are served across tenants in turn (worker/services/turns.py).

The worker here runs one queued message at a time, so the order in which
chunks run is exactly what the tests read: no timing is involved.
"""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from bson import ObjectId
from pymongo import MongoClient, monitoring
from pymongo.errors import PyMongoError

from cli.embedded import free_port
from tests.local import Local, LocalTenant
from tests.stack import Servers
from worker.queueing.routes import BULK_QUEUE, SINGLE_QUEUE, queue_keys
from worker.runtime import Runtime
from worker.services import provisioning, reconciler, turns
from worker.store import assistants
from worker.store.connection import Store
from worker.store.secantus import INSERT_GROUP

CHUNK = 10


@pytest.fixture
def paused(servers: Servers) -> Iterator[Local]:
    """In process, with chunks of ten lines and no batch past the line (see
    `test_a_small_batch_skips_the_line`); nothing runs unless a test runs it."""
    own = Local(servers.settings(CHUNK_SIZE=str(CHUNK), EXPRESS_BATCH_LINES="0"))
    try:
        yield own
    finally:
        own.close()


def submit(tenant: LocalTenant, lines: int, tag: str = "") -> str:
    body = "".join(
        json.dumps({"custom_id": f"{tag}{i}", "body": {"model": "gpt-4", "name": f"{tag}{i}"}})
        + "\n"
        for i in range(lines)
    )
    response = tenant.request(
        "POST", "/v1/batches", data=body, headers={"Content-Type": "application/x-ndjson"}
    )
    assert response.status_code == 202, response.text
    batch_id: str = response.json()["id"]
    return batch_id


def chunks_done(local: Local) -> list[str]:
    """The chunks finished so far, in the order they finished."""
    done = local.db.jobs.find(
        {"batch_id": {"$exists": True}, "status": "done"}, {"_id": 1, "completed_at": 1}
    )
    return [doc["_id"] for doc in done]


def run_in_order(local: Local) -> list[str]:
    """Run the queued messages one by one; the chunks in the order they ran."""
    order: list[str] = []
    while local.worker.run_one():
        order += [unit for unit in chunks_done(local) if unit not in order]
    return order


def status(tenant: LocalTenant, batch_id: str) -> Any:
    return tenant.request("GET", f"/v1/batches/{batch_id}").json()["status"]


def test_a_small_batch_runs_next_beside_a_big_one(paused: Local) -> None:
    big, small = paused.new_tenant(), paused.new_tenant()
    big_batch = submit(big, 30 * CHUNK, "big")
    small_batch = submit(small, CHUNK // 2, "small")
    paused.worker.run_one()
    paused.worker.run_one()
    # Its one chunk ran within the first two turns, while the big batch's 30
    # chunks, queued first, had at most one of theirs.
    assert status(small, small_batch) == "completed"
    assert sum(unit.startswith(big_batch) for unit in chunks_done(paused)) <= 1
    paused.worker.run_queued()
    assert status(big, big_batch) == "completed"


def test_tenants_alternate_and_each_keeps_its_batches_in_order(paused: Local) -> None:
    first, second = paused.new_tenant(), paused.new_tenant()
    a1 = submit(first, 4 * CHUNK, "a1-")
    a2 = submit(first, 3 * CHUNK, "a2-")
    b1 = submit(second, 3 * CHUNK, "b1-")
    order = run_in_order(paused)
    assert len(order) == 10
    mine = [unit for unit in order if unit.startswith((a1, a2))]
    # The first tenant's chunks in submission order: its first batch, then its second.
    assert mine == [f"{a1}.{seq:06d}" for seq in range(4)] + [f"{a2}.{seq:06d}" for seq in range(3)]
    assert [unit for unit in order if unit.startswith(b1)] == [f"{b1}.{s:06d}" for s in range(3)]
    # Turns alternate while both have chunks waiting: the second tenant's three
    # chunks are among the first seven run, never two of one tenant's in a row
    # before the second tenant's line is empty.
    last_b = max(order.index(unit) for unit in order if unit.startswith(b1))
    assert last_b <= 6
    firsts = [unit.startswith(b1) for unit in order[: last_b + 1]]
    assert all(x != y for x, y in itertools.pairwise(firsts))


def lose_redis_state(local: Local, *, lines: bool) -> None:
    """What a Redis restart without persistence loses: the queued turns, and the lines."""
    prefix = local.settings.redis_prefix
    local.rt.redis.delete(*queue_keys(prefix, BULK_QUEUE))
    if lines:
        for key in local.rt.redis.scan_iter(f"{prefix}:turns:*"):
            local.rt.redis.delete(key)


@pytest.mark.parametrize("lines", [True, False], ids=["lines-lost", "turns-lost"])
def test_the_reconciler_brings_back_chunks_redis_lost(paused: Local, lines: bool) -> None:
    tenant = paused.new_tenant()
    batch_id = submit(tenant, 3 * CHUNK)
    lose_redis_state(paused, lines=lines)
    assert not paused.worker.run_queued()
    # Not yet due: nothing is sent twice while its turn may still come.
    reconciler.reconcile(paused.rt)
    assert not paused.worker.run_queued()
    time.sleep(paused.settings.resend_after_seconds + 1)
    reconciler.reconcile(paused.rt)
    paused.worker.run_queued()
    assert status(tenant, batch_id) == "completed"


def test_a_chunk_in_line_with_its_turn_queued_is_not_sent_again(paused: Local) -> None:
    tenant = paused.new_tenant()
    batch_id = submit(tenant, 2 * CHUNK)
    depth = paused.rt.queue_depth(BULK_QUEUE)
    assert depth == 2
    time.sleep(paused.settings.resend_after_seconds + 1)
    reconciler.reconcile(paused.rt)
    # Both turns are still queued: the due chunks were only postponed.
    assert paused.rt.queue_depth(BULK_QUEUE) == depth
    due = paused.db.jobs.find({"batch_id": batch_id}, {"due_at": 1})
    assert all(doc["due_at"] > time.time() for doc in due)
    paused.worker.run_queued()
    assert status(tenant, batch_id) == "completed"


def test_a_cancelled_chunk_passes_its_turn_on(paused: Local) -> None:
    first, second = paused.new_tenant(), paused.new_tenant()
    kept = submit(second, CHUNK)
    # Joining later, the first tenant is served first: its cancelled chunk is
    # taken, cannot be claimed, and the same turn goes on to the next chunk.
    doomed = submit(first, 2 * CHUNK)
    assert first.request("POST", f"/v1/batches/{doomed}/cancel").status_code == 200
    assert paused.worker.run_one()
    assert status(second, kept) == "completed"
    assert status(first, doomed) == "cancelled"


def test_a_tenant_over_its_quota_of_queued_lines_gets_429(servers: Servers) -> None:
    own = Local(servers.settings(CHUNK_SIZE=str(CHUNK), MAX_QUEUED_LINES_PER_TENANT="25"))
    try:
        busy, other = own.new_tenant(), own.new_tenant()
        submit(busy, 2 * CHUNK)
        submit(busy, 1)  # 20 lines queued: under the quota
        refused = busy.request(
            "POST", "/v1/batches", data=b'{"body": {"model": "m"}}\n',
            headers={"Content-Type": "application/x-ndjson"},
        )  # fmt: skip
        assert refused.status_code == 429
        assert int(refused.headers["Retry-After"]) > 0
        assert "quota" in refused.json()["detail"]
        # Its batches stored nothing more, and another tenant is not held back.
        assert own.db.batches.count_documents({"tenant": busy.name}) == 2
        submit(other, 2 * CHUNK)
        own.worker.run_queued()
        submit(busy, 1)
    finally:
        own.close()


def test_a_small_batch_skips_the_line(servers: Servers) -> None:
    own = Local(servers.settings(CHUNK_SIZE=str(CHUNK), EXPRESS_BATCH_LINES=str(CHUNK)))
    try:
        big, small = own.new_tenant(), own.new_tenant()
        big_batch = submit(big, 30 * CHUNK, "big")
        assert own.rt.queue_depth(SINGLE_QUEUE) == 0  # a big batch takes turns
        first = submit(small, CHUNK, "small")
        # Its one chunk went to the single-create workers, as ten creates would.
        assert own.rt.queue_depth(SINGLE_QUEUE) == 1
        assert own.rt.queue_depth(BULK_QUEUE) == 30
        # Once a second: the next small batch of the tenant takes its turn in line.
        second = submit(small, 1, "again")
        assert own.rt.queue_depth(SINGLE_QUEUE) == 1
        assert own.rt.queue_depth(BULK_QUEUE) == 31
        # And a tenant with chunks in line keeps its order: no chunk skips them.
        third = submit(big, 1, "late")
        assert own.rt.queue_depth(SINGLE_QUEUE) == 1
        own.worker.run_one()  # the single queue is served first here
        assert status(small, first) == "completed"
        assert not chunks_done(own)[1:]
        own.worker.run_queued()
        for tenant, batch in ((small, second), (big, big_batch), (big, third)):
            assert status(tenant, batch) == "completed"
    finally:
        own.close()


def test_a_turn_that_fails_puts_its_chunk_back_in_its_place(paused: Local) -> None:
    tenant = paused.new_tenant()
    first = submit(tenant, CHUNK, "first")
    second = submit(tenant, CHUNK, "second")
    # A worker whose store does not answer (nothing listens on the port).
    settings = paused.settings.model_copy(
        update={"mongodb_uri": f"mongodb://127.0.0.1:{free_port()}/gone"}
    )
    broken = Runtime(
        settings=settings, store=Store.connect(settings, timeout_ms=300), redis=paused.rt.redis
    )
    try:
        with pytest.raises(PyMongoError):
            provisioning.take_turn(broken)
    finally:
        broken.store.close()
    chunks = [(tenant.name, f"{first}.000000"), (tenant.name, f"{second}.000000")]
    assert turns.in_line(paused.rt, chunks) == [True, True]
    # Back in its place: still the first of its tenant's line.
    taken = turns.next_chunk(paused.rt)
    assert taken is not None and taken.chunk_id == f"{first}.000000"
    turns.put_back(paused.rt, taken)
    paused.worker.run_queued()
    assert status(tenant, first) == status(tenant, second) == "completed"


class Inserts(monitoring.CommandListener):
    """The documents of each `insert` command the client sends."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "insert":
            self.sizes.append(len(event.command["documents"]))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def test_a_chunks_assistants_are_inserted_in_groups_and_those_stored_before_are_found(
    servers: Servers,
) -> None:
    # A store that locks a collection for a whole insert holds another tenant's
    # small batch behind a chunk's; in groups, it waits for one group at most.
    inserts = Inserts()
    settings = servers.settings()
    client: MongoClient[Any] = MongoClient(settings.mongodb_uri, event_listeners=[inserts])
    store = Store(client=client, db=client[f"groups_{uuid.uuid4().hex[:8]}"])
    try:
        docs = [{"_id": ObjectId(), "n": n} for n in range(250)]
        # Two stored before, in different groups: a chunk run again after a crash.
        store.assistants.insert_many([docs[7], docs[180]])
        inserts.sizes.clear()
        stored = assistants.insert(store, docs)
        assert inserts.sizes == [INSERT_GROUP, INSERT_GROUP, 50]
        assert [doc["n"] for doc in stored] == [7, 180]
        assert store.assistants.count_documents({}) == 250
    finally:
        client.drop_database(store.db.name)
        client.close()
