"""Single creates: a first run takes the units as read (no claim), writes the
assistants and then the results with one conditional write; a second run of
the same units writes nothing twice; a unit sent again is claimed."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
from pymongo import MongoClient, monitoring

from tests.local import Local
from worker.queueing import routes
from worker.runtime import Runtime
from worker.services import provisioning, reconciler
from worker.store import units
from worker.store.connection import Store


@dataclass
class Commands(monitoring.CommandListener):
    """The commands a client sent, as (name, collection, command)."""

    seen: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        collection = event.command.get(event.command_name)
        if isinstance(collection, str):
            self.seen.append((event.command_name, collection, dict(event.command)))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@pytest.fixture
def watched(paused: Local) -> Iterator[tuple[Runtime, Commands]]:
    """A worker's runtime on the same deployment whose store reports every command."""
    commands = Commands()
    settings = paused.settings
    client: MongoClient[Any] = MongoClient(settings.mongodb_uri, event_listeners=[commands])
    store = Store(client=client, db=client[settings.database_name])
    rt = Runtime(settings=settings, store=store, redis=redis.Redis.from_url(settings.redis_url))
    try:
        yield rt, commands
    finally:
        rt.close()


def queued(paused: Local, tenant: str) -> list[str]:
    return [unit["_id"] for unit in paused.db.jobs.find({"tenant": tenant, "status": "queued"})]


def accept(paused: Local, count: int) -> tuple[Any, list[str]]:
    tenant = paused.new_tenant()
    jobs = [tenant.create({"model": "gpt-4", "name": f"n{i}"}).json()["id"] for i in range(count)]
    return tenant, jobs


def test_a_first_run_of_creates_reads_inserts_and_writes_results_once(
    paused: Local, watched: tuple[Runtime, Commands]
) -> None:
    rt, commands = watched
    tenant, jobs = accept(paused, 6)
    ids = queued(paused, tenant.name)
    assert provisioning.process(rt, ids, singles=True) == len(ids)
    on_jobs = [
        (name, command) for name, collection, command in commands.seen if collection == "jobs"
    ]
    assert [name for name, _ in on_jobs] == ["find", "update"], on_jobs
    fences = [update["q"] for update in on_jobs[1][1]["updates"]]
    assert all(fence.get("status") == "queued" and "lease" not in fence for fence in fences)
    assert [name for name, collection, _ in commands.seen if collection == "assistants"] == [
        "insert"
    ]
    for job_id in jobs:
        job = tenant.request("GET", f"/v1/jobs/{job_id}").json()
        assert (job["status"], job["attempts"]) == ("succeeded", 1)
        assert job["started_at"] is not None
        assistant = tenant.request("GET", f"/v1/assistants/{job['result']['body']['id']}")
        assert assistant.json() == job["result"]["body"]


def test_a_second_run_of_the_same_creates_writes_nothing_twice(
    paused: Local, watched: tuple[Runtime, Commands], monkeypatch: pytest.MonkeyPatch
) -> None:
    rt, _ = watched
    tenant, jobs = accept(paused, 4)
    ids = queued(paused, tenant.name)
    take = units.take

    def then_another_run(store: Store, unit_ids: list[str], lease_seconds: int) -> list[Any]:
        # This run has read the units; another (a duplicate message) runs them
        # to the end before this one goes on.
        taken = take(store, unit_ids, lease_seconds)
        monkeypatch.setattr(units, "take", take)
        assert provisioning.process(rt, unit_ids, singles=True) == len(unit_ids)
        return taken

    monkeypatch.setattr(units, "take", then_another_run)
    assert provisioning.process(rt, ids, singles=True) == 0  # its results' write lost
    assert paused.db.assistants.count_documents({"tenant": tenant.name}) == len(jobs)
    for job_id in jobs:
        job = tenant.request("GET", f"/v1/jobs/{job_id}").json()
        assert (job["status"], job["attempts"]) == ("succeeded", 1)
        found = paused.db.assistants.find_one({"job_id": job_id})
        assert found is not None and job["result"]["body"]["id"] == found["id"]


def test_a_unit_sent_again_is_claimed_so_its_attempts_count(
    paused: Local, watched: tuple[Runtime, Commands]
) -> None:
    rt, _ = watched
    tenant, _ = accept(paused, 1)
    (unit_id,) = queued(paused, tenant.name)
    # A first run read it and died: it is still queued, with no attempt written.
    (taken,) = units.take(rt.store, [unit_id], 60)
    assert taken.get("unclaimed")
    assert paused.db.jobs.find_one({"_id": unit_id})["attempts"] == 0
    # The reconciler sends it again (its message gone from the queue too).
    rt.redis.delete(*routes.queue_keys(paused.settings.redis_prefix, routes.SINGLE_QUEUE))
    paused.db.jobs.update_one({"_id": unit_id}, {"$set": {"due_at": 0}})
    assert reconciler.resend_due(rt) == 1
    (claimed,) = units.take(rt.store, [unit_id], 60)
    assert not claimed.get("unclaimed")
    stored = paused.db.jobs.find_one({"_id": unit_id})
    assert (stored["status"], stored["attempts"], stored["lease"]) == (
        "in_progress",
        1,
        claimed["lease"],
    )
