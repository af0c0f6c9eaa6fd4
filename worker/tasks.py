"""Celery tasks: thin wrappers over services that carry ids, never documents."""

from __future__ import annotations

import logging

from pymongo.errors import PyMongoError
from redis.exceptions import RedisError

from worker.celery_app import app, runtime
from worker.queueing import routes
from worker.services import delivery, provisioning, reconciler
from worker.services.group_commit import GroupCommit

log = logging.getLogger(__name__)

# Faults of the store or the broker are transient: retry, never report them
# as a job's result. When retries run out, the reconciler resends the job.
TRANSIENT = (PyMongoError, RedisError, ConnectionError)
RETRY = {"autoretry_for": TRANSIENT, "retry_backoff": 1, "retry_backoff_max": 60, "max_retries": 12}


def _process_together(groups: list[list[str]]) -> list[BaseException | None]:
    ids = list(dict.fromkeys(i for ids in groups for i in ids))
    provisioning.process(runtime(), ids, singles=True)
    return [None] * len(groups)


# Messages of single creates that run at once in one worker process (a threads
# pool) are processed together: while one lot is claimed, stored and recorded,
# the next gathers. A lone message is processed at once; no timer waits.
_together: GroupCommit[list[str]] = GroupCommit(_process_together)


@app.task(name=routes.PROCESS_SINGLE)
def process_single(job_ids: str | list[str]) -> None:
    # The edge sends the creates it stored together as one message (group
    # commit); the reconciler sends one id at a time. Each lot of creates costs
    # one read, one insert_many and one bulk_write. A failure leaves the jobs
    # queued or leased in MongoDB, where the reconciler finds them.
    ids = [job_ids] if isinstance(job_ids, str) else list(job_ids)
    try:
        _together.submit(ids)
    except TRANSIENT:
        log.exception("processing %d single jobs failed; the reconciler will resend", len(ids))


@app.task(name=routes.PROCESS_CHUNK, **RETRY)
def process_chunk(unit_id: str) -> None:
    provisioning.process(runtime(), [unit_id])


@app.task(name=routes.PROCESS_TURN, **RETRY)
def process_turn(tenant: str) -> None:
    # `tenant` is whose chunk earned the turn, not whose chunk it runs.
    provisioning.take_turn(runtime())


@app.task(name=routes.DELIVER, **RETRY)
def deliver(delivery_id: str) -> None:
    delivery.attempt(runtime(), delivery_id)


@app.task(name=routes.RECONCILE)
def reconcile() -> None:
    reconciler.reconcile(runtime())


@app.task(name=routes.SWEEP_WEBHOOKS)
def sweep_webhooks() -> None:
    reconciler.sweep_webhooks(runtime())
