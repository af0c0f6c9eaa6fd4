"""Lanes of the single-create queue: a tenant with a few creates waiting goes
ahead of one with hundreds, instead of behind them.

The single-create queue is one Redis list per priority step (Celery's Redis
transport: `single`, then `single` + separator + 3, 6 and 9), and a worker's
BRPOP names them in that order, so it takes from a lane only when the lanes
ahead of it are empty. Each tenant's creates waiting for a worker are counted
in Redis: the edge adds a group's creates as it sends them, and the worker
takes a unit's off when it takes the unit on its first run (a message
delivered again after its unit ran finds it done, and counts nothing; two
runs of one at the same moment may both count it off, which can only lower
a count that never goes below zero). The count before a send picks the lane: the
first `SHARE` waiting go in the first lane, up to 4x in the second, up to 16x
in the third, the rest in the last. So another tenant's create waits behind
at most a lane's share of a flooding tenant's (and what the workers have
prefetched), while a lone tenant's flood still keeps every worker busy:
nothing waits while a lane has work.

Within a tenant, a later create may be served from an earlier lane: creates
are independent (each its own assistant). Modifies and deletes come through
the same intake and take lanes too: their order per assistant is kept by
`changes.hold_back`, not by the queue (one that comes early waits, counted as
waiting, for the earlier ones, and is taken off once it runs).

The count is a hint, never the truth (MongoDB is): a send that fails leaves
the count high until it lapses (`TTL_MS` after the tenant's last send); a
count the worker cannot lower (Redis down) lapses likewise; it never goes
below zero. Redis unavailable: the first lane, as before there were lanes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from redis.exceptions import RedisError

from worker.domain.documents import Unit
from worker.queueing.routes import PRIORITY_STEPS
from worker.runtime import Runtime

log = logging.getLogger(__name__)

# Creates of one tenant waiting in the first lane; each next lane holds 4x more.
SHARE = 8
# A tenant's count lapses this long after its last send: what is left after a
# lost send or a worker that died between taking and counting.
TTL_MS = 300_000

# KEYS: each tenant's count. ARGV[1]: the TTL, ARGV[1 + i]: creates sent for
# KEYS[i]. Returns each count before the add.
_ADD = """
local before = {}
for i, key in ipairs(KEYS) do
  local n = tonumber(ARGV[1 + i])
  before[i] = redis.call('INCRBY', key, n) - n
  redis.call('PEXPIRE', key, ARGV[1])
end
return before
"""

# KEYS: each tenant's count; ARGV[i]: creates taken for KEYS[i]. A count that
# would fall to zero or below (it lapsed meanwhile) is dropped.
_TAKE = """
for i, key in ipairs(KEYS) do
  if redis.call('DECRBY', key, ARGV[i]) <= 0 then
    redis.call('DEL', key)
  end
end
return 0
"""


def lane_of(waiting: int) -> int:
    """The priority step for a create of a tenant with `waiting` creates queued."""
    bound = SHARE
    for step in PRIORITY_STEPS[:-1]:
        if waiting < bound:
            return step
        bound *= 4
    return PRIORITY_STEPS[-1]


def _key(rt: Runtime, tenant: str) -> str:
    return f"{rt.settings.redis_prefix}:lanes:{tenant}"


def assign(rt: Runtime, units: Iterable[Unit]) -> dict[int, list[str]]:
    """Count the units' creates as waiting, per tenant, and say which lane
    each unit goes in: the unit ids per priority step."""
    docs = list(units)
    sent: dict[str, int] = {}
    for unit in docs:
        sent[unit["tenant"]] = sent.get(unit["tenant"], 0) + len(unit["items"])
    tenants = list(sent)
    try:
        # redis-py's types join its sync and async clients (and differ by version).
        before: Any = rt.redis.eval(
            _ADD, len(tenants), *[_key(rt, t) for t in tenants], TTL_MS, *sent.values()
        )
    except RedisError:
        log.warning("create lanes unavailable: Redis did not answer; first lane")
        return {PRIORITY_STEPS[0]: [unit["_id"] for unit in docs]}
    waiting = dict(zip(tenants, (int(n) for n in before), strict=True))
    lanes: dict[int, list[str]] = {}
    for unit in docs:
        tenant = unit["tenant"]
        lanes.setdefault(lane_of(waiting[tenant]), []).append(unit["_id"])
        waiting[tenant] += len(unit["items"])
    return lanes


def taken(rt: Runtime, units: Iterable[Unit]) -> None:
    """Take units on their first run off their tenants' counts: those that go
    on, after `changes.hold_back` (a change held back is released with its
    attempt given back, and counted off when it runs)."""
    counts: dict[str, int] = {}
    for unit in units:
        # Only the edge's units were counted, not batch chunks sent as one (express).
        if unit["attempts"] == 1 and "batch_id" not in unit:
            counts[unit["tenant"]] = counts.get(unit["tenant"], 0) + len(unit["items"])
    if not counts:
        return
    try:
        rt.redis.eval(_TAKE, len(counts), *[_key(rt, t) for t in counts], *counts.values())
    except RedisError:
        log.warning("create lanes: Redis did not answer; the counts lapse instead")
