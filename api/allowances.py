"""A key's rate-limit window, counted in Redis and taken a few units at a time.

Every edge process shares each key's fixed window in Redis (limits.py). Asking
Redis on every request was the edge's costliest step after its store write: a
round trip whose send alone was about a tenth of the edge's CPU at 8 clients
(py-spy, `bench.versus`). So a process that goes to Redis for a request also
takes an allowance for the key's next requests, counted in the window at once,
and spends it with no round trip until the window ends or the allowance is
spent. The first ask of a window is one unit and each next one twice the last,
up to `LEASE_MAX` units and a hundredth of the limit: a key that sends a few
requests holds next to nothing, a busy one goes to Redis once in 33 requests.

What stays exact: the window never admits more than the limit, across any
number of processes, since Redis grants an allowance only out of what the
limit has left; a request that finds the limit spent is refused and counted as
before. A key's requests to one process see the counts they would without
allowances, `RateLimit-Remaining` included.
What is looser, with several processes serving one key: near the end of its
budget a key may be refused by one process while another still holds up to
`LEASE_MAX` unspent units (which the key's later requests to that process
spend), and one process's `RateLimit-Remaining` counts what the others hold
as spent, and not what they took since it last asked: off by up to
`LEASE_MAX` units for each other process. A limit under 100 units takes no
allowances: every request is counted in Redis, as exact as one counter is.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# At most this many units beyond a request's own, and at most 1/LEASE_SHARE of
# the limit: with the default 6000/minute, 32 units.
LEASE_MAX = 32
LEASE_SHARE = 100

# Keys held before the first sweep of those whose window has ended.
SWEEP_FROM = 1024

# KEYS[1]: the key's window. ARGV: the window in ms, the units this request
# needs, the units asked beyond them, the limit. Counts the units needed and
# grants the asked ones only out of what the limit has left; the window starts
# at its first count. Returns the count, the window's ms left and the grant.
TAKE = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local need = tonumber(ARGV[2])
local grant = math.max(0, math.min(tonumber(ARGV[3]), tonumber(ARGV[4]) - used - need))
local count = redis.call('INCRBY', KEYS[1], need + grant)
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {count, ttl, grant}
"""

# Runs TAKE with (key, window ms, need, ask, limit); raises what Redis raises.
Take = Callable[[str, int, int, int, int], Any]


@dataclass
class _Held:
    count: int  # the window's count in Redis when this process last asked
    spare: int  # units counted there that this process has not spent
    ends: float  # time.monotonic() at which the window ends
    ask: int  # units to ask beyond the next request's own


class Allowances:
    """One process's allowances of every key it has served in its window."""

    def __init__(self, take: Take, amount: int, seconds: int) -> None:
        self._take = take
        self._amount = amount
        self._window_ms = seconds * 1000
        self._most = min(LEASE_MAX, amount // LEASE_SHARE)
        self._lock = threading.Lock()
        self._held: dict[str, _Held] = {}
        self._sweep_at = SWEEP_FROM

    def hit(self, key: str, cost: int) -> tuple[int, int]:
        """Count `cost` units for `key`: the window's count as this process sees
        it (this request's units included; over the limit means refused) and
        the milliseconds the window has left."""
        now = time.monotonic()
        with self._lock:
            held = self._held.get(key)
            if held is not None and held.ends <= now:
                del self._held[key]
                held = None
            if held is not None and held.spare >= cost:
                held.spare -= cost
                return held.count - held.spare, int((held.ends - now) * 1000)
            # What is held is spent on this request; Redis counts the rest.
            need = cost - (held.spare if held is not None else 0)
            ask = held.ask if held is not None else min(1, self._most)
            if held is not None:
                held.spare = 0
        answer = self._take(key, self._window_ms, need, ask, self._amount)
        # Each ask of a window doubles the next, up to the most: a key with a
        # few requests holds a unit or two, a busy one soon 32.
        next_ask = min(self._most, 2 * ask)
        count, ttl_ms, grant = int(answer[0]), int(answer[1]), int(answer[2])
        now = time.monotonic()
        ends = now + ttl_ms / 1000
        with self._lock:
            self._forget_ended(now)
            held = self._held.get(key)
            if held is not None and abs(held.ends - ends) < self._window_ms / 2000:
                # Another request of the key asked in the same window meanwhile:
                # both grants are held. (A window starts only once the last one
                # ended, so two readings of one end differ by far less than that.)
                held.count = max(held.count, count)
                held.spare += grant
                held.ask = max(held.ask, next_ask)
                return held.count - held.spare, ttl_ms
            if held is None or held.ends < ends:
                self._held[key] = _Held(count, grant, ends, next_ask)
            # Else the grant is of a window that has ended since: left unspent,
            # never spent in the next one.
            return count - grant, ttl_ms

    def _forget_ended(self, now: float) -> None:
        # With the lock held. A key is dropped when it is next served after its
        # window ended; the keys not served again are swept once the table has
        # doubled since the last sweep, so sweeping costs a request O(1) on average.
        if len(self._held) >= self._sweep_at:
            for key in [k for k, held in self._held.items() if held.ends <= now]:
                del self._held[key]
            self._sweep_at = max(SWEEP_FROM, 2 * len(self._held))
