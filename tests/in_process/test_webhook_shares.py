"""Tenants' shares of webhook capacity: attempts in flight per tenant across all
its origins, and the quota on a tenant's pending deliveries.

Deployments of their own in this process (their settings differ from the
shared one's), on the session's real servers, with real receivers on loopback.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from tests.local import Local, LocalTenant, Worker
from tests.receiver import Hang, Receiver, Tally
from tests.stack import Servers, wait_until
from worker.domain import endpoints as endpoint_rules
from worker.queueing import routes
from worker.services import slots

TENANT_CAP = 3
ENDPOINT_CAP = 2
ORIGINS = 12
EACH = 4  # creates per hanging origin
TIMEOUT = 10.0  # as deployed: a hanging receiver holds a thread this long
THREADS = 8


@pytest.fixture
def shared(servers: Servers) -> Iterator[Local]:
    """8 worker threads serving every queue; a tenant may hold 3 of them on
    webhooks, whatever its origins, 2 per origin."""
    settings = servers.settings(
        WEBHOOK_TIMEOUT_SECONDS=str(TIMEOUT),
        WEBHOOK_TENANT_CONCURRENCY=str(TENANT_CAP),
        WEBHOOK_ENDPOINT_CONCURRENCY=str(ENDPOINT_CAP),
    )
    local = Local(settings)
    try:
        with local.worker.running(threads=THREADS):
            yield local
    finally:
        local.close()


def pending(tenant: LocalTenant) -> list[dict[str, object]]:
    page = tenant.request("GET", "/v1/webhook_deliveries", params={"limit": 100}).json()
    assert not page["has_more"]
    return [d for d in page["data"] if d["status"] != "delivered"]


def test_a_tenant_with_many_hanging_origins_leaves_other_tenants_webhooks_on_time(
    shared: Local,
) -> None:
    hanging, healthy = shared.new_tenant(), shared.new_tenant()
    tally = Tally()
    with ExitStack() as receivers:
        stuck = [receivers.enter_context(Receiver(tally=tally)) for _ in range(ORIGINS)]
        fine = receivers.enter_context(Receiver())
        for receiver in stuck:
            receiver.default = Hang(300)
        for receiver in stuck:
            for _ in range(EACH):
                created = hanging.create({"model": "m"}, **{"Callback-URL": receiver.url()})
                assert created.status_code == 202
        wait_until(lambda: tally.in_flight >= TENANT_CAP)

        lags = []
        for index in range(8):
            started = time.monotonic()
            created = healthy.create({"model": "m"}, **{"Callback-URL": fine.url()})
            assert created.status_code == 202
            fine.wait_for(index + 1, timeout=30)
            lags.append(time.monotonic() - started)
        held = tally.most

        # Nothing is lost: once the receivers answer, every event arrives.
        for receiver in stuck:
            receiver.release()
        wait_until(lambda: not pending(hanging), timeout=120, interval=0.5)

    # Without the tenant's cap its 12 origins took all 8 threads, each for the
    # 10 s deadline, and these waited for them.
    assert max(lags) < 5, lags
    assert held <= TENANT_CAP, held
    delivered = {r.headers["webhook-id"] for receiver in stuck for r in receiver.requests}
    assert len(delivered) == ORIGINS * EACH


def test_deliveries_over_the_cap_are_woken_as_slots_free_not_left_to_their_due_time(
    shared: Local,
) -> None:
    # 20 events to one receiver that answers in 0.3 s, 2 at a time: those that
    # found the slots taken wait in line, and each finished attempt wakes the
    # next. Left to their due time they would wait a lease (40 s here) each round.
    tenant = shared.new_tenant()
    with Receiver() as hook:
        hook.default = Hang(0.3)
        for _ in range(20):
            tenant.create({"model": "m"}, **{"Callback-URL": hook.url()})
        hook.wait_for(20, timeout=30)
        assert hook.max_in_flight <= ENDPOINT_CAP
    assert len({r.headers["webhook-id"] for r in hook.requests}) == 20


def test_slots_of_the_endpoint_and_the_tenant_are_taken_together_or_not_at_all(
    local: Local,
) -> None:
    tenant = "tenant-slots"
    url, other = "http://127.0.0.1:1/a", "http://127.0.0.1:2/b"

    def limits(to: str) -> list[slots.Limit]:
        return [
            slots.Limit("slots", endpoint_rules.slot_key(tenant, to), 2),
            slots.Limit("tenant", endpoint_rules.tenant_slot_key(tenant), 3),
        ]

    first = [slots.take(local.rt, limits(url), 30) for _ in range(3)]
    assert [type(s) for s in first] == [slots.Slot, slots.Slot, slots.Full]
    assert isinstance(first[2], slots.Full) and first[2].limit.reason == "slots"
    third = slots.take(local.rt, limits(other), 30)
    assert isinstance(third, slots.Slot)
    # The tenant's 3 are taken: the other origin's free slot stays free.
    refused = slots.take(local.rt, limits(other), 30)
    assert isinstance(refused, slots.Full) and refused.limit.reason == "tenant"
    for slot in (first[0], third):
        assert isinstance(slot, slots.Slot)
        slots.give_back(local.rt, slot)
    again = [slots.take(local.rt, limits(other), 30) for _ in range(2)]
    assert all(isinstance(s, slots.Slot) for s in again)


# -- the quota on pending deliveries -------------------------------------


QUOTA = 3


@pytest.fixture
def quota(servers: Servers) -> Iterator[Local]:
    """Deliveries stay pending (nothing serves the webhooks queue) until a test
    runs them; the quota is counted afresh on every request."""
    settings = servers.settings(
        WEBHOOK_TENANT_PENDING_MAX=str(QUOTA), WEBHOOK_QUOTA_CACHE_SECONDS="0"
    )
    local = Local(settings, (routes.SINGLE_QUEUE, routes.BULK_QUEUE, routes.MAINTENANCE_QUEUE))
    try:
        yield local
    finally:
        local.close()


def test_a_tenant_over_its_pending_deliveries_quota_gets_429_on_what_would_add_more(
    quota: Local,
) -> None:
    tenant, other = quota.new_tenant(), quota.new_tenant()
    with Receiver() as hook:
        callback = {"Callback-URL": hook.url()}
        for _ in range(QUOTA + 1):
            assert tenant.create({"model": "m"}, **callback).status_code == 202
        quota.worker.run_queued()  # the creates run; their deliveries stay pending

        refused = tenant.create({"model": "m"}, **callback)
        assert refused.status_code == 429, refused.text
        assert int(refused.headers["Retry-After"]) >= 1
        assert "webhook deliveries pending" in refused.json()["detail"]
        # What adds no delivery goes on: a create without a callback (no
        # endpoint is set), reads, and other tenants.
        assert tenant.create({"model": "m"}).status_code == 202
        assert tenant.request("GET", "/v1/webhook_deliveries").status_code == 200
        assert other.create({"model": "m"}, **callback).status_code == 202
        batch = tenant.request(
            "POST",
            "/v1/batches",
            data=b'{"model": "m"}\n',
            headers={"Content-Type": "application/x-ndjson", **callback},
        )
        assert batch.status_code == 429, batch.text

        # With the tenant's endpoint set, every create would add one.
        put = tenant.request("PUT", "/v1/webhook_endpoint", json={"url": hook.url("/tenant")})
        assert put.status_code == 200
        assert tenant.create({"model": "m"}).status_code == 429

        # Once the receiver has them, the tenant may go on.
        Worker(quota.rt).run_queued()
        wait_until(lambda: len(hook.requests) >= QUOTA + 2)
        assert tenant.create({"model": "m"}, **callback).status_code == 202
