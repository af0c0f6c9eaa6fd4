"""Attempts in flight per webhook endpoint, capped across every worker.

A slot is a member of a Redis sorted set per endpoint, scored by when it
lapses: taking one drops the lapsed members first, so a worker killed
mid-attempt frees its slot when its lease would have run out. Redis's own
clock judges lapse, so the workers' clocks do not matter.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass

from redis.exceptions import RedisError

from worker.runtime import Runtime

log = logging.getLogger(__name__)

# KEYS[1]: the endpoint's set; ARGV: cap, slot token, seconds it holds the slot.
_TAKE = """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
local hold = math.floor(tonumber(ARGV[3]) * 1000)
redis.call('ZADD', KEYS[1], ms + hold, ARGV[2])
redis.call('PEXPIRE', KEYS[1], hold)
return 1
"""


@dataclass(frozen=True)
class Slot:
    key: str
    token: str | None  # None: taken without Redis (it was down), nothing to give back


def take(rt: Runtime, endpoint: str, cap: int, hold_seconds: float) -> Slot | None:
    """A slot of `endpoint`, or None when `cap` attempts to it are in flight.

    A cap of 0 means no cap. While Redis is down deliveries go on uncapped
    rather than stop: the cap protects the pool, it is not what delivers.
    """
    key = f"{rt.settings.redis_prefix}:webhook-slots:{endpoint}"
    if cap <= 0:
        return Slot(key, None)
    token = secrets.token_hex(8)
    try:
        taken = rt.redis.eval(_TAKE, 1, key, cap, token, hold_seconds)
    except RedisError:
        log.warning("endpoint slots unavailable (Redis); sending uncapped", exc_info=True)
        return Slot(key, None)
    return Slot(key, token) if taken else None


def give_back(rt: Runtime, slot: Slot) -> None:
    if slot.token is None:
        return
    try:
        rt.redis.zrem(slot.key, slot.token)
    except RedisError:
        log.warning("endpoint slot not given back; it lapses by itself", exc_info=True)
