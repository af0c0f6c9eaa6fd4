"""Faults under load, on real processes: a worker killed mid-work, Redis
restarted or emptied, MongoDB gone for a while. Each test runs workers of its
own (stopped after it) behind an edge the module's tests share, and counts
what was accepted (202), what finished, and what was made twice: every
accepted job finishes exactly once, nothing stays stuck.

A webhook receiver that is down for a while is in test_webhooks.py
(`test_worker_killed_between_attempts_still_delivers`, and the retry tests).
"""

from __future__ import annotations

import hashlib
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from cli.embedded import start_mongo, start_valkey
from tests.in_process.test_batches import finished_batch, jsonl, results, submit
from tests.outcomes import Outcome, assert_each_accepted_job_done_once, outcome
from tests.stack import Servers, Stack, Tenant, wait_until
from worker.domain.batches import new_batch
from worker.domain.ids import new_id
from worker.queueing import routes
from worker.store import idempotency

# Six chunks, as 3,000 lines in chunks of the default 500 would be, at half the
# work: a kill lands with chunks done, one claimed and more queued.
BATCH_SIZE = 1500
SMALLER_CHUNKS = {"CHUNK_SIZE": "250"}
INVALID_EVERY = 100  # one request in a hundred fails validation: a 422 result
BURST_CLIENTS = 6
BURST_EACH = 50
# The queues these tests' workers serve: every one but the webhooks queue, whose
# worker (started beside one given all queues) no test here sends anything to.
CREATES = "single,bulk,maintenance"


def workers_of_their_own(edge: Stack) -> Iterator[Stack]:
    """The edge's deployment for one test, which starts the workers it needs;
    they are stopped after it, whatever it killed and started meanwhile. The
    test's work is finished by then (each test waits for it), so the next test
    starts on a deployment with nothing open but its own tenant's."""
    try:
        yield edge
    finally:
        edge.stop(names=[name for name in edge.processes if name != "api"])


def edge_alone(servers: Servers, logs_dir: Path, **overrides: str) -> Iterator[Stack]:
    """A deployment whose edge (gunicorn) alone is started: its tests start the
    workers they break (`workers_of_their_own`)."""
    stack = Stack(servers, logs_dir, {**SMALLER_CHUNKS, **overrides})
    try:
        stack.start_api()
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def edge(servers: Servers, logs_dir: Path) -> Iterator[Stack]:
    """A deployment's edge, which no test here breaks: shared."""
    yield from edge_alone(servers, logs_dir)


@pytest.fixture
def own(edge: Stack) -> Iterator[Stack]:
    yield from workers_of_their_own(edge)


class OwnServers(Servers):
    """Valkey and the MongoDB server for this module alone: these get killed
    and started again on the same port and data, which the session's must not."""

    def __init__(self, data: Path) -> None:
        self.data = data
        super().__init__(mongo=start_mongo(data / "mongo"), valkey=start_valkey(data / "valkey"))

    def kill_valkey(self) -> None:
        self.valkey.stop(signal.SIGKILL)

    def start_valkey(self) -> None:
        self.valkey = start_valkey(self.data / "valkey", self.valkey.port)

    def kill_mongo(self) -> None:
        self.mongo.stop(signal.SIGKILL)

    def start_mongo(self) -> None:
        self.mongo = start_mongo(self.data / "mongo", self.mongo.port)

    def stop(self) -> None:
        self.mongo.stop()
        self.valkey.stop()


@pytest.fixture(scope="module")
def own_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnServers]:
    servers = OwnServers(tmp_path_factory.mktemp("own-servers"))
    try:
        yield servers
    finally:
        servers.stop()


@pytest.fixture(scope="module")
def edge_on_own_servers(own_servers: OwnServers, logs_dir: Path) -> Iterator[Stack]:
    """An edge on the servers the tests kill: it stays up through their faults.
    Its store deadline is shorter than the usual 5 s: while MongoDB is down each
    request waits that long for its 503, and the test waits for a few rounds."""
    yield from edge_alone(own_servers, logs_dir, STORE_DEADLINE_MS="2500")


@pytest.fixture
def own_on_own_servers(edge_on_own_servers: Stack) -> Iterator[Stack]:
    yield from workers_of_their_own(edge_on_own_servers)


def batch_lines(count: int) -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = [
        {"custom_id": f"r{i}", "body": {"model": "gpt-4", "name": f"n{i}"}} for i in range(count)
    ]
    for line in lines[::INVALID_EVERY]:
        line["body"] = {"name": 5}
    return lines


def open_units(stack: Stack, tenant: Tenant, status: str) -> int:
    return stack.db.jobs.count_documents({"tenant": tenant.name, "status": status})


def counted(stack: Stack, tenant: Tenant) -> Outcome:
    return outcome(stack.db, tenant.name)


@dataclass
class Accepted:
    """What the client was told was taken: job ids, and which of them are valid."""

    jobs: set[str] = field(default_factory=set)
    valid: set[str] = field(default_factory=set)
    # job id -> the assistant id the client was given (200 results read back)
    assistants: dict[str, str] = field(default_factory=dict)

    def add(self, other: Accepted) -> None:
        self.jobs |= other.jobs
        self.valid |= other.valid
        self.assistants.update(other.assistants)


def finished_as_accepted(tenant: Tenant, batch_id: str, count: int) -> Accepted:
    """The batch completed with the right counts; its results, read through the API."""
    invalid = len(range(0, count, INVALID_EVERY))
    done = finished_batch(tenant, batch_id, timeout=300)
    assert done["status"] == "completed"
    assert done["request_counts"] == {
        "total": count,
        "completed": count - invalid,
        "failed": invalid,
        "cancelled": 0,
        "created": count - invalid,
        "updated": 0,
        "unchanged": 0,
        "deleted": 0,
    }
    rows = results(tenant, batch_id)
    assert [row["custom_id"] for row in rows] == [f"r{i}" for i in range(count)]
    accepted = Accepted({row["job_id"] for row in rows})
    assert len(accepted.jobs) == count
    for row in rows:
        if int(row["custom_id"][1:]) % INVALID_EVERY:
            assert row["status_code"] == 200, row
            accepted.valid.add(row["job_id"])
            accepted.assistants[row["job_id"]] = row["body"]["id"]
        else:
            assert row["status_code"] == 422, row
    return accepted


def each_done_once(stack: Stack, tenant: Tenant, accepted: Accepted) -> Outcome:
    """Once nothing is open: every accepted job finished once, and nothing else exists."""
    store = stack.db
    wait_until(lambda: outcome(store, tenant.name).open_units == 0, timeout=180)
    found = assert_each_accepted_job_done_once(store, tenant.name, accepted.jobs, accepted.valid)
    assert found.job_ids == accepted.jobs
    assert found.assistants == len(accepted.valid)
    for job, assistant in accepted.assistants.items():
        assert found.result_assistants[job] == assistant
    return found


class Clients:
    """Threads sending single creates, each answer recorded: `rounds` each, or
    until stopped; a client can be held at a gate half way. With `retry`,
    each create carries an Idempotency-Key and is sent again until it is
    accepted, as a careful client does after a 503."""

    def __init__(
        self, tenant: Tenant, count: int, invalid_every: int | None = 10, retry: bool = False
    ) -> None:
        self.tenant = tenant
        self.count = count
        self.invalid_every = invalid_every
        self.retry = retry
        self.answers: list[tuple[int, str | None, bool]] = []  # status, job id, valid
        self.gate = threading.Event()
        self.gate.set()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(count)
        self._running: list[Any] = []

    def start(self, rounds: int | None = None, hold_at: int | None = None) -> None:
        self._running = [
            self._pool.submit(self._client, number, rounds, hold_at) for number in range(self.count)
        ]

    def _client(self, number: int, rounds: int | None, hold_at: int | None) -> None:
        i = 0
        while (rounds is None or i < rounds) and not self._stopping.is_set():
            if i == hold_at:
                self.gate.wait(120)
            # Every invalid_every-th create fails validation: a 422 result.
            valid = self.invalid_every is None or i % self.invalid_every != 0
            body = {"model": "gpt-4", "name": f"c{number}-{i}"} if valid else {"name": 5}
            headers = {"Idempotency-Key": f"c{number}-{i}"} if self.retry else {}
            while True:
                response = self.tenant.create(body, **headers)
                accepted = response.status_code == 202
                with self._lock:
                    job = response.json()["id"] if accepted else None
                    self.answers.append((response.status_code, job, valid))
                if response.status_code == 503:
                    assert int(response.headers["Retry-After"]) > 0
                    if self.retry:
                        time.sleep(0.2)
                        continue
                break
            i += 1

    def finish(self, stop: bool = False) -> None:
        """Wait for the clients to end; with `stop`, after their current create."""
        if stop:
            self._stopping.set()
        self.gate.set()
        try:
            for future in self._running:
                future.result()
        finally:
            self._pool.shutdown()

    def statuses(self, since: int = 0) -> list[int]:
        with self._lock:
            return [answer[0] for answer in self.answers[since:]]

    @property
    def accepted(self) -> Accepted:
        with self._lock:
            jobs = [(job, valid) for _, job, valid in self.answers if job is not None]
        return Accepted({job for job, _ in jobs}, {job for job, valid in jobs if valid})


def mid_work(stack: Stack, tenant: Tenant) -> bool:
    """Some work done and some claimed: a fault now hits work in flight."""
    return bool(open_units(stack, tenant, "done") and open_units(stack, tenant, "in_progress"))


# -- a worker killed with SIGKILL, pool processes included --------------------


def test_worker_killed_mid_batch_every_request_finishes_once(own: Stack) -> None:
    own.start_worker(queues=CREATES)
    tenant = own.new_tenant()
    response = submit(tenant, jsonl(batch_lines(BATCH_SIZE)))
    assert response.status_code == 202, response.text

    # Once a chunk is done and another claimed: the claimed one's lease must
    # run out and be taken back, and nothing done may be done again.
    wait_until(lambda: mid_work(own, tenant), interval=0.02)
    own.kill("worker")
    at_kill = counted(own, tenant)
    assert 0 < at_kill.finished < BATCH_SIZE
    own.start_worker("worker2", queues=CREATES)

    accepted = finished_as_accepted(tenant, response.json()["id"], BATCH_SIZE)
    each_done_once(own, tenant, accepted)


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_worker_killed_mid_burst_of_single_creates_every_job_finishes_once(
    own: Stack, pool: str
) -> None:
    if pool == "prefork":
        own.start_worker(queues=CREATES)
    else:
        # As `dev` runs single creates: messages running at once processed together.
        own.start_worker(pool=pool, concurrency=8, queues=CREATES)
    tenant = own.new_tenant()
    clients = Clients(tenant, BURST_CLIENTS)
    clients.gate.clear()  # the second half is sent after the kill, with no worker running
    clients.start(rounds=BURST_EACH, hold_at=BURST_EACH // 2)
    try:
        # Some done, some not yet: single creates are taken without a claim
        # (never `in_progress`), so those a worker holds show as queued.
        wait_until(
            lambda: (
                (open_units(own, tenant, "done") and open_units(own, tenant, "queued"))
                or open_units(own, tenant, "done") == BURST_CLIENTS * BURST_EACH // 2
            ),
            interval=0.01,
        )
        own.kill("worker")
        at_kill = counted(own, tenant)
    finally:
        clients.gate.set()
    clients.finish()
    own.start_worker("worker2", pool=pool, queues=CREATES)

    assert clients.statuses() == [202] * BURST_CLIENTS * BURST_EACH
    each_done_once(own, tenant, clients.accepted)
    assert at_kill.finished < BURST_CLIENTS * BURST_EACH


# -- Redis: restarted, or its queues deleted ----------------------------------


def ready(stack: Stack) -> int:
    return requests.get(stack.url + "/readyz", timeout=30).status_code


def test_redis_restarted_mid_batch_every_request_finishes_once(
    own_servers: OwnServers, own_on_own_servers: Stack
) -> None:
    own = own_on_own_servers
    own.start_worker(queues=CREATES)
    tenant = own.new_tenant()
    response = submit(tenant, jsonl(batch_lines(BATCH_SIZE)))
    assert response.status_code == 202, response.text
    wait_until(lambda: mid_work(own, tenant), interval=0.02)

    own_servers.kill_valkey()
    at_kill = counted(own, tenant)
    assert at_kill.open_units > 0
    # MongoDB holds the jobs, so the edge still takes them (202); the
    # reconciler sends them once Redis is back.
    clients = Clients(tenant, 5)
    clients.start(rounds=2)
    clients.finish()
    assert clients.statuses() == [202] * 10
    assert ready(own) == 503
    own_servers.start_valkey()
    wait_until(lambda: ready(own) == 200)
    if b"Unrecoverable error" in own.output("worker"):
        # Celery's consumer can die when the broker goes away (kombu closes a
        # channel whose connection is already gone), and the worker may hang
        # while it stops; its supervisor starts it again, as compose's restart
        # policy does. What it held is in MongoDB.
        own.kill("worker")
        own.start_worker("worker2", queues=CREATES)

    accepted = finished_as_accepted(tenant, response.json()["id"], BATCH_SIZE)
    accepted.add(clients.accepted)
    each_done_once(own, tenant, accepted)


def test_deleted_queues_are_sent_again_from_mongodb(servers: Servers, own: Stack) -> None:
    stack = own
    # A worker that runs the reconciler but takes no creates: they stay queued.
    stack.start_worker(queues="webhooks,maintenance")
    tenant = stack.new_tenant()
    clients = Clients(tenant, 5)
    clients.start(rounds=20)
    clients.finish()
    assert clients.statuses() == [202] * 100
    response = submit(tenant, jsonl(batch_lines(1000)))
    assert response.status_code == 202, response.text

    broker = redis.Redis.from_url(servers.redis_url)
    prefix = routes.broker_prefix(stack.name)
    # Every lane of both queues (one tenant's 100 creates fill three).
    queues = [key for q in ("single", "bulk") for key in routes.queue_keys(stack.name, q)]
    assert broker.llen(prefix + "single") and broker.llen(prefix + "bulk")
    broker.delete(*queues, prefix + "unacked", prefix + "unacked_index")
    broker.close()

    stack.start_worker("creates", queues="single,bulk", beat=False)
    accepted = finished_as_accepted(tenant, response.json()["id"], 1000)
    accepted.add(clients.accepted)
    each_done_once(stack, tenant, accepted)


def test_a_quiet_tenants_create_is_served_ahead_of_another_tenants_flood(own: Stack) -> None:
    """The lanes of the single queue, served by a real Celery worker: started
    after one tenant queued 60 creates and another one, it takes the other's
    among the first (first in, first out, it would be the last)."""
    flood, quiet = own.new_tenant(), own.new_tenant()
    for _ in range(60):
        assert flood.create({"model": "m"}).status_code == 202
    job_id = quiet.create({"model": "m"}).json()["id"]
    own.start_worker(queues="single", beat=False)
    assert quiet.wait_job(job_id)["status"] == "succeeded"
    done = own.db.jobs.count_documents({"tenant": flood.name, "status": "done"})
    # The flood's first lane (8), what the worker had prefetched (8), and a few
    # finished while this read was on its way; not 60.
    assert done < 30
    wait_until(lambda: own.db.jobs.count_documents({"tenant": flood.name, "status": "done"}) == 60)


# -- MongoDB: killed under load, started again on the same data ---------------


def test_mongodb_down_under_load_is_503_and_loses_nothing_accepted(
    own_servers: OwnServers, own_on_own_servers: Stack
) -> None:
    own = own_on_own_servers
    own.start_worker(queues=CREATES)
    tenant = own.new_tenant()
    response = submit(tenant, jsonl(batch_lines(1000)))
    assert response.status_code == 202, response.text
    clients = Clients(tenant, 4, retry=True)
    clients.start()
    try:
        wait_until(
            lambda: (
                clients.statuses().count(202) >= 40
                and bool(open_units(own, tenant, "done"))
                and bool(
                    open_units(own, tenant, "queued") or open_units(own, tenant, "in_progress")
                )
            )
        )
        own_servers.kill_mongo()
        down = len(clients.statuses())
        wait_until(lambda: ready(own) == 503)
        wait_until(lambda: clients.statuses(down).count(503) >= 8)
        refused = submit(tenant, jsonl(batch_lines(10)))
        assert refused.status_code == 503, refused.text
        job = next(job for job in clients.accepted.jobs)
        assert tenant.request("GET", f"/v1/jobs/{job}").status_code == 503
        own_servers.start_mongo()
        wait_until(lambda: ready(own) == 200)
        back = len(clients.statuses())
        wait_until(lambda: clients.statuses(back).count(202) >= 40)
    finally:
        clients.finish(stop=True)

    statuses = clients.statuses()
    assert set(statuses) <= {202, 503}
    assert 503 in statuses
    accepted = finished_as_accepted(tenant, response.json()["id"], 1000)
    accepted.add(clients.accepted)
    each_done_once(own, tenant, accepted)


def test_key_held_by_a_request_that_died_before_storing_its_job_is_taken_over(
    stack: Stack,
) -> None:
    """What an edge (or the store) dying between the key's claim and the job's
    insert leaves behind: a claimed key and no job. A retry with the same key
    and body stores the job under the claimed id: one job, not a stuck key."""
    tenant = stack.new_tenant()
    body = b'{"model": "gpt-4", "name": "orphaned"}'
    claimed = new_id("job_")
    store = stack.db
    scope = idempotency.scope_id(tenant.name, "POST", "/v1/assistants", "orphaned")
    idempotency.claim(store, scope, idempotency.fingerprint(body, None), claimed, 3600)

    def send(data: bytes) -> requests.Response:
        headers = {"Content-Type": "application/json", "Idempotency-Key": "orphaned"}
        return tenant.request("POST", "/v1/assistants", data=data, headers=headers)

    retried = send(body)
    assert retried.status_code == 202, retried.text
    assert retried.json()["id"] == claimed
    assert tenant.wait_job(claimed)["status"] == "succeeded"
    again = send(body)
    assert again.status_code == 202
    assert again.json()["id"] == claimed
    assert again.headers["Idempotent-Replayed"] == "true"
    assert send(b'{"model": "other"}').status_code == 409
    store = stack.db
    assert store.jobs.count_documents({"tenant": tenant.name}) == 1
    assert store.assistants.count_documents({"tenant": tenant.name}) == 1


def test_batch_key_held_by_a_request_that_died_is_taken_over(stack: Stack) -> None:
    """The same for batches: a key claimed for a batch that no longer exists is
    taken over at once; one left half-stored (`validating`) is taken over once
    the reconciler has removed it."""
    tenant = stack.new_tenant()
    data = jsonl([{"custom_id": "a", "body": {"model": "gpt-4"}}])
    fingerprint = hashlib.sha256(data).hexdigest() + idempotency.fingerprint(b"", None)
    gone, half_stored = new_id("batch_"), new_id("batch_")
    store = stack.db
    for key, target in (("gone", gone), ("half-stored", half_stored)):
        scope = idempotency.scope_id(tenant.name, "POST", "/v1/batches", key)
        idempotency.claim(store, scope, fingerprint, target, 3600)
    left = new_batch(
        batch_id=half_stored,
        tenant=tenant.name,
        total=0,
        now=int(time.time()) - 3600,
        callback_url=None,
        metadata={},
        job_events=False,
        request_id=None,
    )
    store.batches.insert_one(left)

    for key in ("gone", "half-stored"):
        retried = wait_until(
            lambda key=key: (
                (answer := submit(tenant, data, **{"Idempotency-Key": key})).status_code == 202
                and answer
            )
        )
        batch_id = retried.json()["id"]
        assert batch_id not in (gone, half_stored)
        assert finished_batch(tenant, batch_id)["request_counts"]["completed"] == 1
        again = submit(tenant, data, **{"Idempotency-Key": key})
        assert again.status_code == 202
        assert again.json()["id"] == batch_id
        assert again.headers["Idempotent-Replayed"] == "true"
    assert len(tenant.request("GET", "/v1/batches").json()["data"]) == 2
