"""The reconciler: MongoDB is the truth, so whatever Redis lost is found here.

Every open unit carries `due_at`: for a queued unit, when to send it again;
for an in_progress unit, when its lease runs out. One sweep finds them:
- an expired lease is taken back (fenced on the lease seen) and the unit sent
  (a batch chunk: put back in its tenant's line);
- a queued unit is sent again, unless its queue still holds messages: a long
  honest backlog is not duplicated, its own message is likely among them;
- a queued batch chunk missing from its tenant's line is put back in line
  with a turn; one still in line gets a turn only if none is queued;
- events owed by the outbox but never flushed are flushed;
- batches left half-stored by a crashed edge are removed, and chunks that
  finished without being tallied are tallied.
"""

from __future__ import annotations

import logging
import time
from typing import cast

from worker.domain.documents import Doc, Unit
from worker.domain.statuses import UnitStatus
from worker.domain.units import accepted_at
from worker.queueing.routes import BULK_QUEUE, QUEUE_OF, unit_task
from worker.runtime import Runtime
from worker.services import batches as batch_service
from worker.services import outbox, turns
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
    next_due = now + rt.settings.resend_after_seconds
    backlog: dict[str, bool] = {}
    resent = reclaimed = 0
    chunks: list[Doc] = []
    for unit in units.due(rt.store, now, SWEEP_LIMIT):
        if unit["status"] == UnitStatus.IN_PROGRESS:
            if not units.reclaim(rt.store, unit, now):
                continue
            reclaimed += 1
        elif unit["status"] != UnitStatus.QUEUED:
            continue
        if unit.get("batch_id"):
            chunks.append(unit)
            continue
        task = unit_task(None)
        queue = QUEUE_OF[task]
        if unit["status"] == UnitStatus.QUEUED:
            if queue not in backlog:
                backlog[queue] = rt.queue_depth(queue) > 0
            if backlog[queue]:
                continue
        if not units.claim_resend(rt.store, unit["_id"], now, next_due):
            continue
        rt.sender.send(task, unit["_id"])
        resent += 1
    resent += _back_in_line(rt, chunks, now, next_due)
    if resent or reclaimed:
        log.warning(
            "reclaimed %d units whose lease expired; sent %d queued units again", reclaimed, resent
        )
    return resent


def _back_in_line(rt: Runtime, chunks: list[Doc], now: int, next_due: int) -> int:
    """Due chunks: one missing from its tenant's line goes back in line with a
    turn. One still in line waits for the turns queued, if any are; if none
    are (lost with a worker that had taken them), it gets a turn again.
    Returns how many turns went."""
    if not chunks:
        return 0
    waiting = turns.in_line(rt, [(unit["tenant"], unit["_id"]) for unit in chunks])
    if rt.queue_depth(BULK_QUEUE) > 0:
        still = [unit["_id"] for unit, w in zip(chunks, waiting, strict=True) if w]
        units.postpone(rt.store, still, next_due)
        chunks = [unit for unit, w in zip(chunks, waiting, strict=True) if not w]
    lost: dict[str, list[tuple[str, float]]] = {}
    for unit in chunks:
        if units.claim_resend(rt.store, unit["_id"], now, next_due):
            lost.setdefault(unit["tenant"], []).append((unit["_id"], accepted_at(cast(Unit, unit))))
    for tenant, lot in lost.items():
        turns.join(rt, tenant, lot)
    return sum(len(lot) for lot in lost.values())


def settle_batches(rt: Runtime) -> None:
    for tenant, batch_id in batches.abandoned(rt.store, int(time.time()) - ABANDONED_AFTER_SECONDS):
        units.delete_batch_units(rt.store, tenant, batch_id)
        batches.delete(rt.store, tenant, batch_id, only_validating=True)
    for tenant, batch_id in batches.unfinished(rt.store, SWEEP_LIMIT):
        batch_service.settle(rt, tenant, batch_id)


def sweep_webhooks(rt: Runtime) -> None:
    outbox.sweep(rt)
