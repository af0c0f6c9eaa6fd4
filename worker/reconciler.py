"""The reconciler: MongoDB is the truth, so whatever Redis lost is found here.

Every open unit carries `due_at`: for a queued unit, when to send it again;
for an in_progress unit, when its lease runs out. One sweep finds them:
- an expired lease is taken back (fenced on the lease seen) and the unit sent;
- a queued unit is sent again, unless its queue still holds messages: a long
  honest backlog is not duplicated, its own message is likely among them;
- events owed by the outbox but never flushed are flushed;
- batches left half-stored by a crashed edge are removed, and chunks that
  finished without being tallied are tallied.
"""

from __future__ import annotations

import logging
import time

from worker import batches, tasks, webhooks
from worker.celery_app import BULK_QUEUE, SINGLE_QUEUE
from worker.runtime import Runtime
from worker.store import Doc

log = logging.getLogger(__name__)

SWEEP_LIMIT = 5000


def reconcile(rt: Runtime) -> None:
    resend_due(rt)
    flush_outbox(rt)
    settle_batches(rt)


def resend_due(rt: Runtime) -> int:
    now = int(time.time())
    backlog = {queue: rt.queue_depth(queue) > 0 for queue in (SINGLE_QUEUE, BULK_QUEUE)}
    due = rt.store.jobs.find(
        {"due_at": {"$lt": now}},
        {"status": 1, "lease": 1, "due_at": 1, "batch_id": 1},
        limit=SWEEP_LIMIT,
    )
    resent = reclaimed = 0
    for unit in due:
        queue = BULK_QUEUE if unit.get("batch_id") else SINGLE_QUEUE
        if unit["status"] == "in_progress":
            reclaimed += _reclaim(rt, unit, now)
        elif unit["status"] != "queued" or backlog[queue]:
            continue
        # Claim the resend itself, so two reconcilers do not both send.
        claimed = rt.store.jobs.update_one(
            {"_id": unit["_id"], "status": "queued", "due_at": {"$lt": now}},
            {"$set": {"due_at": now + rt.settings.resend_after_seconds}},
        )
        if not claimed.modified_count:
            continue
        if queue == BULK_QUEUE:
            tasks.send_chunk(unit["_id"])
        else:
            tasks.send_single(unit["_id"])
        resent += 1
    if resent or reclaimed:
        log.warning(
            "reclaimed %d units whose lease expired; sent %d queued units again", reclaimed, resent
        )
    return resent


def _reclaim(rt: Runtime, unit: Doc, now: int) -> int:
    # Conditional on the lease we saw: a worker that finishes in between wins.
    result = rt.store.jobs.update_one(
        {"_id": unit["_id"], "lease": unit["lease"], "status": "in_progress"},
        {"$set": {"status": "queued", "due_at": now - 1}, "$unset": {"lease": ""}},
    )
    return result.modified_count


def flush_outbox(rt: Runtime) -> None:
    units, batch_ids = webhooks.pending_outbox(rt, older_than=time.time() - 5)
    webhooks.flush_unit_events(rt, units)
    for batch_id in batch_ids:
        webhooks.flush_batch_event(rt, batch_id)


def settle_batches(rt: Runtime) -> None:
    now = int(time.time())
    # A batch that stayed `validating` this long lost its edge mid-store.
    abandoned = rt.store.batches.find(
        {"status": "validating", "created_at": {"$lt": now - 600}}, {"_id": 1}
    )
    for doc in abandoned:
        rt.store.jobs.delete_many({"batch_id": doc["_id"]})
        rt.store.batches.delete_one({"_id": doc["_id"], "status": "validating"})
    for doc in rt.store.batches.find(
        {"status": {"$in": ["in_progress", "cancelling"]}}, {"_id": 1}, limit=SWEEP_LIMIT
    ):
        batches.settle(rt, doc["_id"])


def sweep_webhooks(rt: Runtime) -> None:
    for delivery_id in webhooks.due(rt):
        tasks.send_delivery(delivery_id)
