"""Instrumentation points of the worker: Prometheus metrics and the log line of each event.

Metric objects are plain module-level declarations (no I/O). Under a
multi-process server (Celery's prefork pool) the entry point sets
PROMETHEUS_MULTIPROC_DIR before this module is imported, so every process
writes its samples to a file there and one collector reads them all.

Only processes that count these import this module: in multi-process mode a
declared series is written (as 0) by every process that imports it, so an
edge that imported it would show worker series it never counts. What a
scrape reads is in `exposition`.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from prometheus_client import Counter, Histogram

from worker.domain.documents import Unit
from worker.domain.units import kind, request_ids

# Read at scrape time, so declared with the scrape; named here too, so that
# this module lists every series of the service.
from worker.telemetry.exposition import QueueDepth

__all__ = ["QueueDepth", "units_claimed", "units_finished", "webhook_attempt"]

log = logging.getLogger("worker.jobs")

OUTCOMES = {200: "succeeded", 404: "failed", 422: "failed"}

JOBS = Counter(
    "assistant_ingest_jobs_finished_total",
    "Jobs finished, by kind (single or batch) and outcome (succeeded: 200, failed: 404 or 422, "
    "error: 500 after repeated attempts).",
    ["kind", "outcome"],
)
JOB_LATENCY = Histogram(
    "assistant_ingest_job_latency_seconds",
    "Seconds from a job's acceptance at the edge to its result (acceptance is recorded "
    "to the second).",
    ["kind"],
    buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 3 * 3600),
)
BATCH_CHUNKS = Counter(
    "assistant_ingest_batch_chunks_processed_total",
    'Batch chunks processed; with assistant_ingest_jobs_finished_total{kind="batch"} '
    "this is batch throughput.",
)
WEBHOOK_ATTEMPTS = Counter(
    "assistant_ingest_webhook_attempts_total",
    "Webhook delivery attempts, by what followed: delivered, retrying or failed.",
    ["result"],
)
WEBHOOK_DEFERRED = Counter(
    "assistant_ingest_webhook_deferred_total",
    "Webhook attempts put back as due later without being made, by reason: slots (as "
    "many attempts to the endpoint in flight as its cap allows), tenant (as many of "
    "the tenant's attempts, to all its origins, as its cap allows) or breaker (the "
    "tenant's endpoint is failing and another attempt probes it) or retry_after (its "
    "receiver asked for time with a 429 or 503).",
    ["reason"],
)
WEBHOOK_HELD = Counter(
    "assistant_ingest_webhook_held_total",
    "Webhook deliveries kept as failed without an attempt: their endpoint is disabled.",
)
WEBHOOK_ENDPOINTS_DISABLED = Counter(
    "assistant_ingest_webhook_endpoints_disabled_total",
    "Tenants' webhook endpoints disabled, by reason: gone (it answered 410) or failing "
    "(it failed for WEBHOOK_DISABLE_AFTER_SECONDS without a success).",
    ["reason"],
)
WEBHOOK_SECONDS = Histogram(
    "assistant_ingest_webhook_attempt_duration_seconds",
    "Duration of one webhook delivery attempt.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15),
)


def units_claimed(units: list[Unit]) -> None:
    """A worker took these units: one line each, carrying the request that made it."""
    for unit in units:
        log.info(
            "job started",
            extra={**_unit_fields(unit), "attempt": unit.get("attempts")},
        )


def units_finished(
    units: list[Unit],
    outcomes: dict[str, list[tuple[int, Any]]],
    finished: set[str],
    *,
    started: float,
    stages: dict[str, float],
) -> None:
    """Count and log the units this worker finished (a fenced-out write counts nothing)."""
    now = time.time()
    for unit in units:
        if unit["_id"] not in finished:
            continue
        unit_kind = kind(unit)
        codes = [code for code, _ in outcomes[unit["_id"]]]
        latency = max(0.0, now - unit["created_at"])
        for code in codes:
            JOBS.labels(unit_kind, OUTCOMES.get(code, "error")).inc()
            JOB_LATENCY.labels(unit_kind).observe(latency)
        if unit_kind == "batch":
            BATCH_CHUNKS.inc()
        tally = {OUTCOMES.get(code, "error"): codes.count(code) for code in set(codes)}
        extra: dict[str, Any] = {**_unit_fields(unit), "latency_seconds": round(latency, 3)}
        # From the edge's acceptance to this worker's claim: the broker, the
        # worker's pickup and any grouping; then this worker's own stages.
        pickup = (started - unit.get("accepted_at", started)) * 1000
        extra["stages_ms"] = {"pickup": round(pickup, 3), **stages}
        extra["units_together"] = len(units)
        if len(codes) == 1:
            extra["status_code"] = codes[0]
        else:
            extra["outcomes"] = tally
        log.info("job finished", extra=extra)


def _unit_fields(unit: Unit) -> dict[str, Any]:
    if unit.get("batch_id"):
        return {
            "request_id": unit.get("request_id"),
            "batch_id": unit["batch_id"],
            "unit_id": unit["_id"],
            "jobs": len(unit["items"]),
        }
    if len(unit["items"]) == 1:
        return {"request_id": unit.get("request_id"), "job_id": unit["_id"]}
    # Single creates accepted together: each job with its edge request.
    return {
        "unit_id": unit["_id"],
        "jobs": len(unit["items"]),
        "job_ids": [item["id"] for item in unit["items"]],
        "request_ids": request_ids(unit),
    }


def webhook_attempt(result: str, duration_ms: int) -> None:
    """One delivery attempt and what follows it: delivered, retrying (pending) or failed."""
    WEBHOOK_ATTEMPTS.labels("retrying" if result == "pending" else result).inc()
    WEBHOOK_SECONDS.observe(duration_ms / 1000)


def webhook_deferred(reason: str) -> None:
    WEBHOOK_DEFERRED.labels(reason).inc()


def webhook_held() -> None:
    WEBHOOK_HELD.inc()


def webhook_endpoint_disabled(reason: str) -> None:
    WEBHOOK_ENDPOINTS_DISABLED.labels(reason).inc()
