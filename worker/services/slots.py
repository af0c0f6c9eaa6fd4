"""Attempts in flight, capped across every worker: per endpoint (a tenant and an
origin) and per tenant (across all its origins); the deliveries waiting for a
slot; and the waits receivers ask for (`Retry-After`), kept per endpoint.

A delivery that finds a cap reached joins that limit's waiting line (a Redis
list) and is put back as due much later; each attempt that gives its slots
back wakes the first in line of each of its limits. So waiting costs nothing
while it waits (no delivery tried again every second to see whether a slot
is free), and a freed slot is taken at once. The line is a hint: a wake that
is lost (Redis restarted) leaves the delivery to its due time.

A slot is a member of a Redis sorted set per limit, scored by when it lapses:
taking one drops the lapsed members first, so a worker killed mid-attempt
frees its slot when its lease would have run out. Redis's own clock judges
lapse, so the workers' clocks do not matter. An attempt takes a slot of every
limit it counts against in one script, or none: it never holds the endpoint's
slot while it waits for the tenant's.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass

from redis.exceptions import RedisError

from worker.runtime import Runtime

log = logging.getLogger(__name__)

# KEYS: one sorted set per limit. ARGV[1]: the slot's token, ARGV[2]: seconds it
# holds the slot, ARGV[2 + i]: the cap of KEYS[i] (0: no cap). Returns 0 when
# the slots are taken, else the index of the first limit that is full.
_TAKE = """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
for i, key in ipairs(KEYS) do
  local cap = tonumber(ARGV[2 + i])
  if cap > 0 then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', ms)
    if redis.call('ZCARD', key) >= cap then
      return i
    end
  end
end
local hold = math.floor(tonumber(ARGV[2]) * 1000)
for i, key in ipairs(KEYS) do
  if tonumber(ARGV[2 + i]) > 0 then
    redis.call('ZADD', key, ms + hold, ARGV[1])
    redis.call('PEXPIRE', key, hold)
  end
end
return 0
"""


@dataclass(frozen=True)
class Limit:
    reason: str  # what a deferral for it is counted as (`webhook_deferred`)
    name: str  # the limit's key under the slots' prefix
    cap: int  # attempts in flight at once; 0: no cap


@dataclass(frozen=True)
class Slot:
    keys: tuple[str, ...]
    token: str | None  # None: taken without Redis (it was down), nothing to give back


@dataclass(frozen=True)
class Full:
    """No slot taken: `limit` has as many attempts in flight as its cap."""

    limit: Limit


def take(rt: Runtime, limits: list[Limit], hold_seconds: float) -> Slot | Full:
    """A slot of every limit, or Full naming the first one whose cap is reached.

    While Redis is down deliveries go on uncapped rather than stop: the caps
    protect the pool, they are not what delivers.
    """
    capped = [limit for limit in limits if limit.cap > 0]
    keys = tuple(f"{rt.settings.redis_prefix}:webhook-slots:{limit.name}" for limit in capped)
    if not capped:
        return Slot(keys, None)
    token = secrets.token_hex(8)
    try:
        full = int(
            rt.redis.eval(
                _TAKE, len(keys), *keys, token, hold_seconds, *(limit.cap for limit in capped)
            )
        )
    except RedisError:
        log.warning("webhook slots unavailable (Redis); sending uncapped", exc_info=True)
        return Slot(keys, None)
    return Full(capped[full - 1]) if full else Slot(keys, token)


def hold_for(rt: Runtime, name: str, seconds: float) -> None:
    """No attempt under `name` for `seconds` (a receiver's Retry-After); a later
    answer replaces an earlier one's wait."""
    if seconds <= 0:
        return
    try:
        rt.redis.set(_hold_key(rt, name), 1, px=max(1, int(seconds * 1000)))
    except RedisError:
        log.warning("Retry-After not kept for the endpoint (Redis)", exc_info=True)


def held_until(rt: Runtime, name: str) -> float | None:
    """When the wait a receiver asked for under `name` ends, or None: no wait.
    Judged by the key's own expiry in Redis, whatever the workers' clocks."""
    try:
        left_ms = int(rt.redis.pttl(_hold_key(rt, name)))
    except RedisError:
        return None
    return time.time() + left_ms / 1000 if left_ms > 0 else None


def _hold_key(rt: Runtime, name: str) -> str:
    return f"{rt.settings.redis_prefix}:webhook-hold:{name}"


def wait_for(rt: Runtime, limit: Limit, delivery_id: str, seconds: float) -> None:
    """Put the delivery in `limit`'s waiting line (kept `seconds` after the last to join)."""
    key = _waiting_key(rt, limit.name)
    try:
        pipe = rt.redis.pipeline(transaction=False)
        pipe.rpush(key, delivery_id)
        pipe.expire(key, max(1, int(seconds)))
        pipe.execute()
    except RedisError:
        log.warning("delivery not put in line for a slot; it waits its due time", exc_info=True)


def give_back(rt: Runtime, slot: Slot) -> list[str]:
    """Give the slots back; returns the first delivery waiting in line for each
    of its limits (taken off the line), for the caller to wake."""
    if slot.token is None:
        return []
    try:
        pipe = rt.redis.pipeline(transaction=False)
        for key in slot.keys:
            pipe.zrem(key, slot.token)
        for key in slot.keys:
            pipe.lpop(_waiting_key_of(key))
        answers = pipe.execute()
    except RedisError:
        log.warning("webhook slot not given back; it lapses by itself", exc_info=True)
        return []
    woken = answers[len(slot.keys) :]
    return [w.decode() if isinstance(w, bytes) else str(w) for w in woken if w]


def _waiting_key(rt: Runtime, name: str) -> str:
    return f"{rt.settings.redis_prefix}:webhook-waiting:{name}"


def _waiting_key_of(slots_key: str) -> str:
    return slots_key.replace(":webhook-slots:", ":webhook-waiting:", 1)
