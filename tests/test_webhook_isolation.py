"""Webhooks isolated from provisioning, and tenants from each other.

A deployment laid out as in production: creates on one worker, deliveries on
a worker of their own (a threads pool, its default). Each endpoint (tenant and origin)
has at most 2 attempts in flight; an attempt hangs at most 3 s; the tenant's
endpoint is disabled after failing for 4 s.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.receiver import Hang, Receiver, Reply
from tests.stack import Servers, Stack, Tenant, wait_until

CAP = 2
TIMEOUT = 3.0
DISABLE_AFTER = 4.0


@pytest.fixture(scope="module")
def isolated(servers: Servers, logs_dir: Path) -> Iterator[Stack]:
    stack = Stack(
        servers,
        logs_dir,
        {
            "WEBHOOK_TIMEOUT_SECONDS": str(TIMEOUT),
            "WEBHOOK_ENDPOINT_CONCURRENCY": str(CAP),
            "WEBHOOK_DISABLE_AFTER_SECONDS": str(DISABLE_AFTER),
        },
    )
    try:
        stack.start(
            {"name": "creates", "queues": "single,bulk,maintenance"},
            {"name": "webhooks", "queues": "webhooks", "beat": False, "concurrency": 8},
        )
        yield stack
    finally:
        stack.stop()


def deliveries(tenant: Tenant, **params: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    after = None
    while True:
        query = {"limit": 100, **params, **({"after": after} if after else {})}
        page = tenant.request("GET", "/v1/webhook_deliveries", params=query).json()
        found += page["data"]
        if not page["has_more"]:
            return found
        after = page["last_id"]


def endpoint(tenant: Tenant) -> dict[str, Any]:
    response = tenant.request("GET", "/v1/webhook_endpoint")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_a_hanging_receiver_delays_neither_other_tenants_creates_nor_their_webhooks(
    isolated: Stack,
) -> None:
    hanging, healthy = isolated.new_tenant(), isolated.new_tenant()
    with Receiver() as stuck, Receiver() as fine:
        stuck.default = Hang(120)
        for _ in range(20):
            hanging.create({"model": "m"}, **{"Callback-URL": stuck.url()})
        stuck.wait_for(CAP)

        waited, delivered_after = [], []
        for i in range(10):
            started = time.monotonic()
            response = healthy.create(
                {"model": "m", "name": f"a{i}"}, Prefer="wait=30", **{"Callback-URL": fine.url()}
            )
            answered = time.monotonic()
            assert response.status_code == 200, response.text
            waited.append(answered - started)
            fine.wait_for(i + 1, timeout=20)
            delivered_after.append(time.monotonic() - answered)
        hung_meanwhile = len(stuck.requests)
        # Read while the receiver still runs: once it stops, attempts fail to
        # connect and are recorded without reaching it.
        recorded = sum(len(d["attempts"]) for d in deliveries(hanging))
        seen = len(stuck.requests)

    # Bounded, not timed to the millisecond: a hung attempt lasts 3 s, and
    # before deliveries had workers of their own a create waited 20 s and more.
    assert max(waited) < 5, waited
    assert max(delivered_after) < 5, delivered_after
    assert hung_meanwhile >= CAP  # tenant B's receiver was hanging all along
    assert 1 <= stuck.max_in_flight <= CAP
    assert fine.max_in_flight >= 1
    # Attempts that found no slot were put back without being spent: every
    # recorded attempt reached the receiver, and those not yet recorded are in
    # flight (at most CAP, and as many again may have arrived between the reads).
    assert recorded <= seen <= recorded + 2 * CAP
    assert all(d["status"] == "delivered" for d in deliveries(healthy))


def test_the_cap_is_per_endpoint_so_a_tenants_other_endpoint_keeps_flowing(
    isolated: Stack,
) -> None:
    tenant = isolated.new_tenant()
    with Receiver() as stuck, Receiver() as fine:
        stuck.default = Hang(120)
        for _ in range(6):
            tenant.create({"model": "m"}, **{"Callback-URL": stuck.url()})
        stuck.wait_for(CAP)
        started = time.monotonic()
        for _ in range(5):
            tenant.create({"model": "m"}, **{"Callback-URL": fine.url()})
        fine.wait_for(5, timeout=20)
        took = time.monotonic() - started
        assert stuck.max_in_flight == CAP
    assert took < 8, took


def test_a_failing_endpoint_is_spaced_then_disabled_then_enabled(isolated: Stack) -> None:
    tenant = isolated.new_tenant()
    with Receiver() as hook:
        hook.default = Reply(500)
        put = tenant.request("PUT", "/v1/webhook_endpoint", json={"url": hook.url()})
        assert put.json() == {
            "object": "webhook_endpoint",
            "url": hook.url(),
            "status": "enabled",
            "failing_since": None,
            "disabled_at": None,
            "disabled_reason": None,
        }
        for _ in range(5):
            tenant.create({"model": "m"})
        failing = wait_until(lambda: (e := endpoint(tenant))["failing_since"] and e)
        assert failing["status"] == "enabled"

        disabled = wait_until(lambda: (e := endpoint(tenant))["status"] == "disabled" and e, 30)
        assert disabled["failing_since"] <= disabled["disabled_at"]
        assert disabled["disabled_at"] - disabled["failing_since"] >= DISABLE_AFTER - 1
        # Those waiting (in line for a slot, or spaced by the breaker) are held
        # once it is disabled, not at their due time, up to a lease (33 s) away.
        found = wait_until(
            lambda: (ds := deliveries(tenant)) and all(d["status"] == "failed" for d in ds) and ds,
            timeout=25,
        )
        reached = hook.requests

        # Spaced: past the first attempts in flight together, one at a time,
        # about a schedule step (1 s here) apart; the others waited unspent.
        gaps = [b.at - a.at for a, b in zip(reached[CAP:], reached[CAP + 1 :], strict=False)]
        assert all(gap >= 0.7 for gap in gaps), gaps
        made = [a for d in found for a in d["attempts"]]
        assert all(a["status_code"] == 500 for a in made)
        assert len(made) == len(reached)
        assert len(reached) < 5 * 4  # fewer than every delivery's whole schedule
        # Those still waiting when it was disabled were kept, never attempted again.
        held = [d for d in found if d["error"] == "endpoint disabled"]
        assert held
        assert disabled["disabled_reason"].startswith("failing: no successful delivery since")

        # While disabled nothing is sent; the delivery is recorded as failed.
        job = tenant.create({"model": "m"}, Prefer="wait=30")
        assert job.status_code == 200
        latest = wait_until(
            lambda: (
                (ds := deliveries(tenant)) and len(ds) == 6 and ds[-1]["status"] == "failed" and ds
            )
        )
        assert latest[-1]["attempts"] == [] and latest[-1]["error"] == "endpoint disabled"
        assert len(hook.requests) == len(reached)

        hook.default = Reply(200)
        enabled = tenant.request("POST", "/v1/webhook_endpoint/enable")
        assert enabled.status_code == 200
        assert enabled.json()["status"] == "enabled"
        assert enabled.json()["failing_since"] is None
        retried = tenant.request("POST", f"/v1/webhook_deliveries/{latest[-1]['id']}/retry")
        assert retried.status_code == 200
        tenant.create({"model": "m"})
        hook.wait_for(len(reached) + 2)
        wait_until(
            lambda: [d["status"] for d in deliveries(tenant)][-2:] == ["delivered", "delivered"]
        )


def test_put_enables_a_disabled_endpoint(isolated: Stack) -> None:
    tenant = isolated.new_tenant()
    with Receiver() as hook:
        assert tenant.request("PUT", "/v1/webhook_endpoint", json={"url": hook.url()}).ok
        store = isolated.db
        store.tenants.update_one(
            {"_id": tenant.name},
            {"$set": {"endpoint_failing_since": 1.0, "endpoint_disabled_at": 2.0}},
        )
        assert endpoint(tenant)["status"] == "disabled"
        again = tenant.request("PUT", "/v1/webhook_endpoint", json={"url": hook.url()})
        assert again.json()["status"] == "enabled"
        tenant.create({"model": "m"})
        hook.wait_for(1)


def test_a_worker_of_webhooks_only_runs_a_threads_pool(isolated: Stack) -> None:
    for name, pool, concurrency in (("webhooks", "threads", 8), ("creates", "prefork", 2)):
        log = (isolated.logs / f"{isolated.name}-{name}.log").read_text()
        (started,) = [json.loads(line) for line in log.splitlines() if "worker starting" in line]
        assert (started["pool"], started["concurrency"]) == (pool, concurrency)


def test_enable_without_an_endpoint_is_404(isolated: Stack) -> None:
    tenant = isolated.new_tenant()
    assert tenant.request("POST", "/v1/webhook_endpoint/enable").status_code == 404


def test_the_default_worker_runs_deliveries_apart_so_a_hanging_receiver_delays_no_create(
    servers: Servers, logs_dir: Path
) -> None:
    # `assistant-ingest worker` with no options: every queue. Once it ran them
    # all in one pool of 2 processes, which two hanging attempts held for their
    # whole deadline (30 s here), and other tenants' creates waited for them.
    stack = Stack(servers, logs_dir, {"WEBHOOK_TIMEOUT_SECONDS": "30"})
    try:
        stack.start_api(wait=False)
        supervisor = stack.spawn("worker", "worker")
        stack.wait_ready()
        log = stack.logs / f"{stack.name}-worker.log"
        wait_until(lambda: log.read_bytes().count(b" ready.") >= 2)
        hanging, other = stack.new_tenant(), stack.new_tenant()
        with Receiver() as stuck:
            stuck.default = Hang(120)
            for _ in range(6):
                hanging.create({"model": "m"}, **{"Callback-URL": stuck.url()})
            stuck.wait_for(2)
            waited = []
            for _ in range(5):
                started = time.monotonic()
                response = other.create({"model": "m"}, Prefer="wait=20")
                waited.append(time.monotonic() - started)
                assert response.status_code == 200, response.text
            assert max(waited) < 10, waited

        started = [
            json.loads(line) for line in log.read_text().splitlines() if "worker starting" in line
        ]
        assert started[0]["webhooks_apart"] is True
        assert started[0]["queues"] == ["single", "bulk", "webhooks", "maintenance"]
        pools = sorted((s["queues"], s["pool"]) for s in started[1:])
        assert pools == [(["single", "bulk", "maintenance"], "prefork"), (["webhooks"], "threads")]

        # A stop signal to the command's own process stops both workers.
        children = Path(f"/proc/{supervisor.pid}/task/{supervisor.pid}/children").read_text()
        os.kill(supervisor.pid, signal.SIGTERM)
        assert supervisor.wait(60) == 0
        assert all(not Path(f"/proc/{pid}").exists() for pid in children.split())
    finally:
        stack.stop()
