"""The single-create queue's lanes: a tenant with many creates waiting goes
behind a tenant with few, nothing sent is lost, and the counts return to zero."""

from __future__ import annotations

from typing import Any

from tests.local import Local, LocalTenant
from worker.queueing import routes
from worker.services import lanes, provisioning


def waiting(local: Local, tenant: LocalTenant) -> int:
    count: Any = local.rt.redis.get(f"{local.settings.redis_prefix}:lanes:{tenant.name}")
    return int(count or 0)


def lengths(local: Local) -> list[int]:
    keys = routes.queue_keys(local.settings.redis_prefix, routes.SINGLE_QUEUE)
    return [int(local.rt.redis.llen(key)) for key in keys]


def done(local: Local, tenant: LocalTenant) -> int:
    return local.db.jobs.count_documents({"tenant": tenant.name, "status": "done"})


def test_lanes_by_creates_waiting() -> None:
    share = lanes.SHARE
    assert [lanes.lane_of(n) for n in (0, share - 1)] == [0, 0]
    assert [lanes.lane_of(n) for n in (share, 4 * share - 1)] == [3, 3]
    assert [lanes.lane_of(n) for n in (4 * share, 16 * share - 1)] == [6, 6]
    assert lanes.lane_of(16 * share) == 9


def test_a_quiet_tenants_create_goes_ahead_of_a_flood(paused: Local) -> None:
    flood, quiet = paused.new_tenant(), paused.new_tenant()
    sent = 4 * lanes.SHARE + 3
    for _ in range(sent):
        assert flood.create({"model": "m"}).status_code == 202
    assert waiting(paused, flood) == sent
    # The flood's first SHARE in the first lane, the next 3 x SHARE in the
    # second, the rest in the third.
    assert lengths(paused) == [lanes.SHARE, 3 * lanes.SHARE, 3, 0]
    answer = quiet.create({"model": "m"})
    assert answer.status_code == 202
    assert lengths(paused)[0] == lanes.SHARE + 1

    # The quiet tenant's create runs after the flood's first lane, not after all of it.
    for _ in range(lanes.SHARE + 1):
        assert paused.worker.run_one()
    assert done(paused, quiet) == 1
    assert done(paused, flood) == lanes.SHARE
    assert waiting(paused, flood) == sent - lanes.SHARE

    # Nothing is lost, and the counts go back to nothing.
    paused.worker.run_queued()
    assert done(paused, flood) == sent
    assert waiting(paused, flood) == waiting(paused, quiet) == 0
    assert paused.rt.queue_depth(routes.SINGLE_QUEUE) == 0


def test_a_message_run_twice_counts_once(paused: Local) -> None:
    tenant, other = paused.new_tenant(), paused.new_tenant()
    for _ in range(2):
        tenant.create({"model": "m"})
    other.create({"model": "m"})
    unit_ids = [u["_id"] for u in paused.db.jobs.find({"tenant": tenant.name})]
    # The first unit's message delivered twice: the second run finds it taken.
    provisioning.process(paused.rt, unit_ids[:1], singles=True)
    provisioning.process(paused.rt, unit_ids[:1], singles=True)
    assert waiting(paused, tenant) == 1
    assert waiting(paused, other) == 1
    paused.worker.run_queued()
    assert waiting(paused, tenant) == waiting(paused, other) == 0
    assert done(paused, tenant) == 2


def test_modifies_served_out_of_order_apply_in_order_and_count_once(paused: Local) -> None:
    """A later modify in an earlier lane waits for the earlier ones (held back,
    still counted), then applies; every count is taken off once."""
    tenant = paused.new_tenant()
    tenant.create({"model": "m", "name": "n"})
    paused.worker.run_queued()
    (assistant,) = paused.db.assistants.find({"tenant": tenant.name})
    path = f"/v1/assistants/{assistant['id']}"
    for index in range(lanes.SHARE + 2):  # the last 2 in the second lane
        assert tenant.request("POST", path, json={"name": f"m{index}"}).status_code == 202
    for _ in range(lanes.SHARE):
        assert paused.worker.run_one()
    assert waiting(paused, tenant) == 2
    # A finished change sends again only the changes held back for it, none here.
    assert lengths(paused) == [0, 2, 0, 0]
    # A tenant with 2 waiting: the next modify takes the first lane, ahead of them.
    assert tenant.request("POST", path, json={"name": "last"}).status_code == 202
    assert lengths(paused) == [1, 2, 0, 0]
    paused.worker.run_queued()
    assert tenant.request("GET", path).json()["name"] == "last"
    assert waiting(paused, tenant) == 0
    assert paused.db.jobs.count_documents({"tenant": tenant.name, "status": "done"}) == 12
