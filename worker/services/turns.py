"""Batch chunks served across tenants in turn, not first in first out.

A stored batch's chunks wait in Redis, in a sorted set per tenant ordered by
when each chunk was accepted (so a tenant's batches run in submission order),
and the tenant joins a ring of tenants with waiting chunks. The bulk queue
carries turns, not chunks: one message per waiting chunk, naming none. A bulk
worker that takes a turn asks the ring, at that moment, for the next tenant
and that tenant's oldest chunk. So however many chunks one tenant queued, a
tenant that queues one afterwards waits only for a bulk worker to be free,
and a lone tenant still keeps every bulk worker busy: nothing here needs to
know how many workers there are.

The ring is a sorted set of tenants scored by a virtual time: each chunk
served moves its tenant one step on, and a tenant that joins starts half a
step before the tenant at the head, so it is served next but cannot get
ahead of anyone by leaving and joining again. Every operation is one Lua
script, O(log tenants + log chunks), atomic across every edge and worker.

A small batch (up to `EXPRESS_BATCH_LINES` lines, one chunk) of a tenant with
nothing in line skips the line: its chunk goes to the single-create workers,
as that many single creates would, so it waits neither for another tenant's
backlog nor for a bulk worker to finish the chunk it is running. A tenant may
send one such chunk a second (`express`); more go in line like any other.

MongoDB stays the truth: a waiting chunk is a `queued` unit with a `due_at`.
When it comes due the reconciler looks for it in its line: there, it is
left alone till its next due time; gone (Redis lost the line, or a worker
took it and died before claiming it), it is put back in line with a turn of
its own. A chunk served twice is claimed once (the claim is a compare-and-set). The scripts
name each tenant's key from its id, which a Redis Cluster would refuse: run
the broker as one Redis (with replicas or Sentinel), as Celery's transport
expects anyway.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from worker.queueing.routes import PROCESS_SINGLE, PROCESS_TURN
from worker.runtime import Runtime

log = logging.getLogger(__name__)

# Turns a worker spends looking for a chunk it can claim (one cancelled, or
# finished by an earlier turn, is skipped) before it lets the turn go.
TRIES_PER_TURN = 16
# Members added per script call, well under Lua's limit on unpacked arguments.
_GROUP = 500

# KEYS[1]: the ring; KEYS[2]: the tenant's line. ARGV[1]: the tenant, then
# (score, chunk id) pairs.
_JOIN = """
for i = 2, #ARGV, 2 do
  redis.call('ZADD', KEYS[2], ARGV[i], ARGV[i + 1])
end
if redis.call('ZSCORE', KEYS[1], ARGV[1]) == false then
  local head = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  local start = 0
  if #head > 0 then start = tonumber(head[2]) - 0.5 end
  redis.call('ZADD', KEYS[1], start, ARGV[1])
end
return 1
"""

# KEYS[1]: the ring. ARGV[1]: the prefix of the tenants' lines. Returns the
# next chunk id with its tenant and its place in line, or false when no chunk
# waits.
_NEXT = """
local head = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
while #head > 0 do
  local tenant, at = head[1], tonumber(head[2])
  local line = ARGV[1] .. tenant
  local first = redis.call('ZRANGE', line, 0, 0, 'WITHSCORES')
  if #first > 0 then
    redis.call('ZREM', line, first[1])
    if redis.call('ZCARD', line) == 0 then
      redis.call('ZREM', KEYS[1], tenant)
    else
      redis.call('ZADD', KEYS[1], at + 1, tenant)
    end
    return {first[1], tenant, first[2]}
  end
  redis.call('ZREM', KEYS[1], tenant)
  head = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
end
return false
"""


# KEYS[1]: the tenant's line; KEYS[2]: its express mark. ARGV[1]: how long the
# mark holds (ms). 1 if the tenant may send a chunk past the line now.
_EXPRESS = """
if redis.call('ZCARD', KEYS[1]) > 0 then
  return 0
end
if redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[1]) then
  return 1
end
return 0
"""
# How often one tenant may send a chunk past the line.
EXPRESS_EVERY_MS = 1000


def _ring(rt: Runtime) -> str:
    return f"{rt.settings.redis_prefix}:turns:ring"


def _lines(rt: Runtime) -> str:
    return f"{rt.settings.redis_prefix}:turns:line:"


@dataclass(frozen=True)
class Taken:
    """A chunk taken out of line: its id, its tenant and its place in line."""

    chunk_id: str
    tenant: str
    at: float


def join(rt: Runtime, tenant: str, chunks: Sequence[tuple[str, float]]) -> None:
    """Put a tenant's chunks `(id, accepted_at)` in its line and send a turn for
    each. A chunk already in line keeps its place, and its extra turn serves
    whichever chunk is next. Raises if Redis is down; the chunks are stored, so
    the reconciler puts them in line later."""
    if not chunks:
        return
    _in_line(rt, tenant, chunks)
    for _ in chunks:
        rt.sender.send(PROCESS_TURN, tenant)


def _in_line(rt: Runtime, tenant: str, chunks: Sequence[tuple[str, float]]) -> None:
    for start in range(0, len(chunks), _GROUP):
        group = chunks[start : start + _GROUP]
        pairs = [value for chunk_id, at in group for value in (repr(at), chunk_id)]
        rt.redis.eval(_JOIN, 2, _ring(rt), _lines(rt) + tenant, tenant, *pairs)


def express(rt: Runtime, tenant: str, chunk_id: str) -> bool:
    """Send a small batch's one chunk to the single-create workers, if the tenant
    has nothing in line and sent none this past second; False if it must wait
    in line (or Redis cannot tell)."""
    try:
        allowed = rt.redis.eval(
            _EXPRESS,
            2,
            _lines(rt) + tenant,
            f"{rt.settings.redis_prefix}:turns:express:{tenant}",
            EXPRESS_EVERY_MS,
        )
    except RedisError:
        return False
    if not allowed:
        return False
    rt.sender.send(PROCESS_SINGLE, [chunk_id])
    return True


def next_chunk(rt: Runtime) -> Taken | None:
    """The chunk whose turn it is (taken out of line), or None if none waits."""
    found: Any = rt.redis.eval(_NEXT, 1, _ring(rt), _lines(rt))
    if not found:
        return None
    chunk_id, tenant, at = (v.decode() if isinstance(v, bytes) else str(v) for v in found)
    return Taken(chunk_id, tenant, float(at))


def put_back(rt: Runtime, taken: Taken) -> None:
    """A chunk whose turn failed (the store or the broker down) goes back to its
    place in line, with no turn of its own: the failed turn is retried and
    serves it. If Redis cannot take it, the reconciler puts it back once due."""
    try:
        _in_line(rt, taken.tenant, [(taken.chunk_id, taken.at)])
    except RedisError:
        log.warning("chunk %s left for the reconciler to put back in line", taken.chunk_id)


def queued_lines(rt: Runtime, tenant: str) -> int:
    """The lines of a tenant's chunks waiting in line, each chunk counted as
    full: one read of Redis, whatever the tenant holds."""
    # redis-py's types join its sync and async clients (and differ by version).
    chunks: Any = rt.redis.zcard(_lines(rt) + tenant)
    return int(chunks) * rt.settings.chunk_size


def in_line(rt: Runtime, chunks: Sequence[tuple[str, str]]) -> list[bool]:
    """Whether each `(tenant, chunk id)` still waits in its tenant's line."""
    pipe = rt.redis.pipeline(transaction=False)
    for tenant, chunk_id in chunks:
        pipe.zscore(_lines(rt) + tenant, chunk_id)
    return [score is not None for score in pipe.execute()]
