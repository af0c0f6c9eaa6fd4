"""Task names and the queue each goes to: the one place both are written.

Task names are a contract with messages already queued: keep them stable.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

SINGLE_QUEUE = "single"
BULK_QUEUE = "bulk"
WEBHOOK_QUEUE = "webhooks"
MAINTENANCE_QUEUE = "maintenance"
ALL_QUEUES = (SINGLE_QUEUE, BULK_QUEUE, WEBHOOK_QUEUE, MAINTENANCE_QUEUE)

PROCESS_SINGLE = "assistants.process_single"
PROCESS_CHUNK = "assistants.process_chunk"
# A turn of the bulk workers: it runs whichever chunk is next across tenants
# (worker/services/turns.py), so a message names no chunk.
PROCESS_TURN = "assistants.process_turn"
DELIVER = "webhooks.deliver"
RECONCILE = "maintenance.reconcile"
SWEEP_WEBHOOKS = "maintenance.sweep_webhooks"

QUEUE_OF = {
    PROCESS_SINGLE: SINGLE_QUEUE,
    PROCESS_CHUNK: BULK_QUEUE,
    PROCESS_TURN: BULK_QUEUE,
    DELIVER: WEBHOOK_QUEUE,
    RECONCILE: MAINTENANCE_QUEUE,
    SWEEP_WEBHOOKS: MAINTENANCE_QUEUE,
}


def unit_task(batch_id: str | None) -> str:
    """The task that processes a unit: batch chunks go to the bulk queue."""
    return PROCESS_CHUNK if batch_id else PROCESS_SINGLE


# Celery's Redis transport keeps a list per priority step for each queue, and a
# worker takes from them in this order (the first step's list is the queue's
# own name). Set in the transport's options (config.py), so both agree.
PRIORITY_STEPS = (0, 3, 6, 9)
PRIORITY_SEP = "\x06\x16"


def queue_lists(queue: str) -> list[str]:
    """The Redis lists of a queue (without the broker's key prefix), in the
    order workers serve them."""
    return [queue + (f"{PRIORITY_SEP}{step}" if step else "") for step in PRIORITY_STEPS]


def broker_prefix(redis_prefix: str) -> str:
    """What Celery's Redis transport puts before each of its keys (config.py)."""
    return f"{redis_prefix}:celery:"


def queue_keys(redis_prefix: str, queue: str) -> list[str]:
    """The Redis keys of a queue's lists, in the order workers serve them."""
    return [broker_prefix(redis_prefix) + name for name in queue_lists(queue)]


def queue_depths(client: Any, redis_prefix: str, queues: Iterable[str]) -> dict[str, int]:
    """Messages waiting in each queue, all its lanes summed (not counting those a
    worker prefetched), read in one pipeline. Raises what Redis raises."""
    keys = {queue: queue_keys(redis_prefix, queue) for queue in queues}
    pipe = client.pipeline(transaction=False)
    for key in (key for each in keys.values() for key in each):
        pipe.llen(key)
    lengths = iter(pipe.execute())
    return {queue: sum(int(next(lengths)) for _ in each) for queue, each in keys.items()}
