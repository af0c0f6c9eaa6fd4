"""The edge stays up: slow clients, a thousand waiters and a receiver that hangs,
all at once, while another tenant creates and `/healthz` is probed.

Bounded in time and on loopback only. Nothing here is timed as a speed: a
probe that is not answered within its timeout fails, as a hung edge would.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.attackers import Crowd, crowds, request_head, timed_get
from tests.in_process.test_batches import jsonl, submit
from tests.receiver import Hang, Receiver
from tests.stack import Servers, Stack, Tenant, wait_until

WAITERS = 1000
# Waiters come from several addresses and keys, as many clients would: one
# address or one key alone is capped per edge process.
SOURCES = [f"127.0.0.{n}" for n in range(10, 18)]
KEYS = 4


@pytest.fixture
def edge(servers: Servers, logs_dir: Path) -> Iterator[Stack]:
    # No bulk worker (and no small-batch lane to the single-create workers): the
    # batches the waiters wait on stay queued all along. The 1,000 waiters read
    # their jobs in one burst, which this store serves slowly: the edge's store
    # deadline (tested in tests/in_process/test_edge_shares.py) is lengthened so
    # that what is measured here is the serving model holding them.
    stack = Stack(servers, logs_dir, {"EXPRESS_BATCH_LINES": "0", "STORE_DEADLINE_MS": "30000"})
    try:
        stack.start(
            # As `dev` runs it: a threads pool, whose running messages are processed together.
            {"name": "single", "queues": "single,maintenance", "pool": "threads", "concurrency": 8},
            {"name": "hooks", "queues": "webhooks", "beat": False},
        )
        yield stack
    finally:
        # A stop answers its 1,000 waiters (their clients gone), each with a read
        # of this slow store: seconds of work for nobody, so it is cut short.
        stack.stop(grace=2)


def queued_jobs(tenant: Tenant, count: int) -> list[str]:
    batch = submit(tenant, jsonl([{"body": {"model": "m"}} for _ in range(count)])).json()
    page = tenant.request("GET", f"/v1/jobs?batch_id={batch['id']}&limit={count}").json()
    return [job["id"] for job in page["data"]]


def waiters(port: int, tenants: list[Tenant], jobs: list[list[str]]) -> list[Crowd]:
    made = []
    for i, source in enumerate(SOURCES):
        owner = i % len(tenants)
        head = request_head(
            "GET",
            f"/v1/jobs/{jobs[owner][i]}",
            {"Authorization": f"Bearer {tenants[owner].api_key}", "Prefer": "wait=60"},
        )
        made.append(Crowd(port, source, head).open(WAITERS // len(SOURCES)))
    return made


def attackers(port: int, key: str, waiting: list[Tenant], jobs: list[list[str]]) -> list[Crowd]:
    """Slow headers, slow bodies (sent with `key`) and the waiters, connected."""
    body_head = request_head(
        "POST",
        "/v1/assistants",
        {"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        content_length=400,
    )
    return [
        # Headers that never end, without any API key.
        Crowd(
            port,
            "127.0.0.50",
            b"POST /v1/assistants HTTP/1.1\r\nHost: x\r\n",
            drip=b"X-Slow: " + b"a" * 200,
            interval=1,
        ).open(80),
        # A body one byte every two seconds.
        Crowd(port, "127.0.0.51", body_head, drip=b" " * 400, interval=2).open(20),
        *waiters(port, waiting, jobs),
    ]


def answers_within(port: int, seconds: float) -> bool:
    try:
        timed_get(port, "/healthz", timeout=seconds)
    except TimeoutError:
        return False
    return True


def test_slow_clients_waiters_and_a_hanging_receiver_leave_the_edge_up(edge: Stack) -> None:
    victim = edge.new_tenant()
    waiting = [edge.new_tenant() for _ in range(KEYS)]
    jobs = [queued_jobs(tenant, 20) for tenant in waiting]

    with Receiver() as hanging:
        hanging.then(*[Hang(120)] * 40)
        slow = edge.new_tenant()
        hooked = [
            slow.create({"model": "m"}, **{"Callback-URL": hanging.url()}).json()["id"]
            for _ in range(20)
        ]
        with crowds(*attackers(edge.port, victim.api_key, waiting, jobs)) as attack:
            hanging.wait_for(2, timeout=60)  # deliveries to it are in flight, and hang
            # A thousand requests arriving at once take the edge a moment of CPU;
            # once they are held, they cost it nothing.
            wait_until(lambda: answers_within(edge.port, 1.0), timeout=60)
            for _ in range(20):
                timed_get(edge.port, "/healthz", timeout=5)
            answers = [
                victim.create({"model": "m", "name": f"v{i}"}, Prefer="wait=30") for i in range(10)
            ]
            assert [answer.status_code for answer in answers] == [200] * 10
            held = sum(len(crowd.sockets) - crowd.answered() for crowd in attack[2:])
            assert held == WAITERS, f"{WAITERS - held} waiters were answered or dropped early"

    # Nothing accepted is lost: every create of the tenant whose receiver hung is done.
    for job_id in hooked:
        assert slow.wait_job(job_id)["status"] == "succeeded"
    listed = victim.request("GET", "/v1/assistants?limit=100").json()["data"]
    assert sorted(a["name"] for a in listed) == sorted(a.json()["name"] for a in answers)
    for tenant, queued in zip(waiting, jobs, strict=True):
        assert all(
            tenant.request("GET", f"/v1/jobs/{job}").json()["status"] == "queued" for job in queued
        )
