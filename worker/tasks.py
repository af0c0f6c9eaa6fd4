"""Celery tasks: thin wrappers that carry ids, never documents.

Task names are a contract with messages already queued: keep them stable.
"""

from __future__ import annotations

import logging
from typing import Any

from celery_batches import Batches
from pymongo.errors import PyMongoError
from redis.exceptions import RedisError

from worker import delivery, provisioning, reconciler
from worker.celery_app import app, runtime, settings

log = logging.getLogger(__name__)

# Faults of the store or the broker are transient: retry, never report them
# as a job's result. When retries run out, the reconciler resends the job.
TRANSIENT = (PyMongoError, RedisError, ConnectionError)
RETRY = {"autoretry_for": TRANSIENT, "retry_backoff": 1, "retry_backoff_max": 60, "max_retries": 12}


@app.task(name="assistants.process_single", base=Batches, flush_every=100, flush_interval=0.02)
def process_single(requests: list[Any]) -> None:
    # Single creates queued together are processed together: one claim, one
    # insert_many, one bulk_write for the lot. A failure leaves the jobs
    # queued or leased in MongoDB, where the reconciler finds them.
    job_ids = list(dict.fromkeys(request.args[0] for request in requests))
    try:
        provisioning.process(runtime(), job_ids)
    except TRANSIENT:
        log.exception("processing %d single jobs failed; the reconciler will resend", len(job_ids))


@app.task(name="assistants.process_chunk", **RETRY)
def process_chunk(unit_id: str) -> None:
    provisioning.process(runtime(), [unit_id])


@app.task(name="webhooks.deliver", **RETRY)
def deliver(delivery_id: str) -> None:
    delivery.attempt(runtime(), delivery_id)


@app.task(name="maintenance.reconcile")
def reconcile() -> None:
    reconciler.reconcile(runtime())


@app.task(name="maintenance.sweep_webhooks")
def sweep_webhooks() -> None:
    reconciler.sweep_webhooks(runtime())


def send_single(job_id: str) -> None:
    process_single.apply_async(args=(job_id,), queue="single")


def send_chunk(unit_id: str) -> None:
    process_chunk.apply_async(args=(unit_id,), queue="bulk")


def send_delivery(delivery_id: str) -> None:
    # The attempt keeps its own deadline; the hard limit is a backstop for
    # anything outside it (a name lookup that hangs). The delivery's lease
    # outlasts it, so the sweep sends it again after such a kill.
    limit = settings().webhook_timeout_seconds + delivery.LEASE_MARGIN_SECONDS / 2
    deliver.apply_async(args=(delivery_id,), queue="webhooks", time_limit=limit)
