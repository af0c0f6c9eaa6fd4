"""Celery tasks: thin wrappers over services that carry ids, never documents."""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import worker_init
from celery_batches import Batches
from pymongo.errors import PyMongoError
from redis.exceptions import RedisError

from worker.celery_app import app, runtime, settings
from worker.queueing import routes
from worker.services import delivery, provisioning, reconciler

log = logging.getLogger(__name__)

# Faults of the store or the broker are transient: retry, never report them
# as a job's result. When retries run out, the reconciler resends the job.
TRANSIENT = (PyMongoError, RedisError, ConnectionError)
RETRY = {"autoretry_for": TRANSIENT, "retry_backoff": 1, "retry_backoff_max": 60, "max_retries": 12}


@app.task(name=routes.PROCESS_SINGLE, base=Batches, flush_every=100, flush_interval=0.02)
def process_single(requests: list[Any]) -> None:
    # Single creates queued together are processed together: one claim, one
    # insert_many, one bulk_write for the lot. A failure leaves the jobs
    # queued or leased in MongoDB, where the reconciler finds them.
    job_ids = list(dict.fromkeys(request.args[0] for request in requests))
    try:
        provisioning.process(runtime(), job_ids)
    except TRANSIENT:
        log.exception("processing %d single jobs failed; the reconciler will resend", len(job_ids))


@worker_init.connect(weak=False)
def _group_single_creates(**_: Any) -> None:
    process_single.flush_every = settings().single_flush_every
    process_single.flush_interval = settings().single_flush_interval


@app.task(name=routes.PROCESS_CHUNK, **RETRY)
def process_chunk(unit_id: str) -> None:
    provisioning.process(runtime(), [unit_id])


@app.task(name=routes.DELIVER, **RETRY)
def deliver(delivery_id: str) -> None:
    delivery.attempt(runtime(), delivery_id)


@app.task(name=routes.RECONCILE)
def reconcile() -> None:
    reconciler.reconcile(runtime())


@app.task(name=routes.SWEEP_WEBHOOKS)
def sweep_webhooks() -> None:
    reconciler.sweep_webhooks(runtime())
