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

from worker.domain.statuses import UnitStatus
from worker.queueing.routes import QUEUE_OF, unit_task
from worker.runtime import Runtime
from worker.services import batches as batch_service
from worker.services import outbox
from worker.store import batches, units

log = logging.getLogger(__name__)

SWEEP_LIMIT = 5000
# A batch that stayed `validating` this long lost its edge mid-store.
ABANDONED_AFTER_SECONDS = 600


def reconcile(rt: Runtime) -> None:
    resend_due(rt)
    outbox.flush_stale(rt, older_than=time.time() - 5, limit=1000)
    settle_batches(rt)


def resend_due(rt: Runtime) -> int:
    now = int(time.time())
    backlog: dict[str, bool] = {}
    resent = reclaimed = 0
    for unit in units.due(rt.store, now, SWEEP_LIMIT):
        task = unit_task(unit.get("batch_id"))
        queue = QUEUE_OF[task]
        if unit["status"] == UnitStatus.IN_PROGRESS:
            reclaimed += units.reclaim(rt.store, unit, now)
        elif unit["status"] != UnitStatus.QUEUED:
            continue
        else:
            if queue not in backlog:
                backlog[queue] = rt.queue_depth(queue) > 0
            if backlog[queue]:
                continue
        if not units.claim_resend(
            rt.store, unit["_id"], now, now + rt.settings.resend_after_seconds
        ):
            continue
        rt.sender.send(task, unit["_id"])
        resent += 1
    if resent or reclaimed:
        log.warning(
            "reclaimed %d units whose lease expired; sent %d queued units again", reclaimed, resent
        )
    return resent


def settle_batches(rt: Runtime) -> None:
    for batch_id in batches.abandoned(rt.store, int(time.time()) - ABANDONED_AFTER_SECONDS):
        units.delete_batch_units(rt.store, batch_id)
        batches.delete(rt.store, batch_id, only_validating=True)
    for batch_id in batches.unfinished(rt.store, SWEEP_LIMIT):
        batch_service.settle(rt, batch_id)


def sweep_webhooks(rt: Runtime) -> None:
    outbox.sweep(rt)
