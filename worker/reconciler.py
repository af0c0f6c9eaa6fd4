"""The reconciler: MongoDB is the truth, so whatever Redis lost is found here.

- queued units whose last send is older than a threshold are sent again
  (a long honest backlog is not duplicated: its sends are recent);
- in_progress units whose lease ran out are put back to queued and sent;
- events owed by the outbox but never flushed are flushed;
- batches left half-stored by a crashed edge are removed, and batches whose
  chunks all finished are brought to their final state.
"""

from __future__ import annotations

import logging
import time

from worker import batches, tasks, webhooks
from worker.runtime import Runtime

log = logging.getLogger(__name__)

SWEEP_LIMIT = 5000


def reconcile(rt: Runtime) -> None:
    reclaim_expired_leases(rt)
    resend_stale(rt)
    flush_outbox(rt)
    settle_batches(rt)


def reclaim_expired_leases(rt: Runtime) -> int:
    now = time.time()
    expired = rt.store.jobs.find(
        {"status": "in_progress", "lease_expires": {"$lt": now}},
        {"lease": 1},
        limit=SWEEP_LIMIT,
    )
    reclaimed = 0
    for unit in expired:
        # Conditional on the lease we saw: a worker that finishes in between wins.
        result = rt.store.jobs.update_one(
            {"_id": unit["_id"], "lease": unit["lease"], "status": "in_progress"},
            {
                "$set": {"status": "queued", "sent_at": 0},
                "$unset": {"lease": "", "lease_expires": ""},
            },
        )
        reclaimed += result.modified_count
    if reclaimed:
        log.warning("reclaimed %d units whose lease expired", reclaimed)
    return reclaimed


def resend_stale(rt: Runtime) -> int:
    now = int(time.time())
    threshold = now - rt.settings.resend_after_seconds
    stale = list(
        rt.store.jobs.find(
            {"status": "queued", "sent_at": {"$lt": threshold}},
            {"sent_at": 1, "batch_id": 1},
            limit=SWEEP_LIMIT,
        )
    )
    resent = 0
    for unit in stale:
        # Claim the resend itself, so two reconcilers do not both send.
        claimed = rt.store.jobs.update_one(
            {"_id": unit["_id"], "status": "queued", "sent_at": unit["sent_at"]},
            {"$set": {"sent_at": now}},
        )
        if not claimed.modified_count:
            continue
        if unit.get("batch_id"):
            tasks.send_chunk(unit["_id"])
        else:
            tasks.send_single(unit["_id"])
        resent += 1
    if resent:
        log.warning("resent %d queued units whose message was lost or delayed", resent)
    return resent


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
