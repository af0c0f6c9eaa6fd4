"""A tenant's quota of undelivered webhook deliveries.

A tenant whose pending deliveries (queued or waiting to be retried) number
more than `webhook_tenant_pending_max` is answered 429 with `Retry-After` on
requests that would add more: a create, modify, delete or batch upload that
carries a `Callback-URL`, or any of them when the tenant's endpoint is set,
and the webhook routes that queue deliveries (retry, test, recover). What
does not add deliveries (reads, cancels, the endpoint's own settings) goes on.

The count is an index range read that stops one past the cap, and each edge
process trusts it for `webhook_quota_cache_seconds`, so a flood of refused
requests costs no store reads. It is checked before the request is stored,
not reserved: a request admitted just under the cap may pass it, by one
request's events (a batch with job events: its lines).
"""

from __future__ import annotations

import logging
import threading
import time

from flask import current_app, g, request
from flask.sansio.app import App
from pymongo.errors import PyMongoError

from api.context import settings, store
from api.errors import ApiError
from worker.store import deliveries, endpoints

log = logging.getLogger(__name__)

# Routes (Flask endpoint names) whose requests make jobs, and so events.
MAKE_JOBS = frozenset(
    {
        "assistants.create_assistant",
        "assistants.modify_assistant",
        "assistants.delete_assistant",
        "batches.create_batch",
        "console.retry_batch",
        "console.apply_plan",
    }
)
# Routes that queue deliveries themselves, whatever the endpoint.
QUEUE_DELIVERIES = frozenset(
    {
        "webhooks.retry_delivery",
        "webhooks.test_endpoint",
        "webhooks.recover_deliveries",
        "console.retry_delivery",
        "console.test_endpoint",
        "console.recover_deliveries",
    }
)
# Deliveries drain at their receivers' pace: a client told to come back later
# is told a while, not a second.
RETRY_AFTER_SECONDS = 30
CACHE_SIZE = 10_000
_STATE = "assistant_ingest.delivery_quota"


class PendingCounts:
    """Per tenant: whether it is over its quota, and whether it has an endpoint,
    as last read, until the entry lapses."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._known: dict[str, tuple[bool, bool, float]] = {}

    def over(self, tenant: str, cap: int, ttl: float) -> tuple[bool, bool]:
        """(over the quota, has an endpoint); the endpoint is read only when over."""
        now = time.monotonic()
        with self._lock:
            known = self._known.get(tenant)
        if known is not None and known[2] > now:
            return known[0], known[1]
        timeout_ms = settings().store_timeout_ms
        over = deliveries.count_pending(store(), tenant, cap + 1, timeout_ms) > cap
        has_endpoint = over and endpoints.get(store(), tenant) is not None
        with self._lock:
            if len(self._known) >= CACHE_SIZE:
                self._known.clear()
            self._known[tenant] = (over, has_endpoint, now + ttl)
        return over, has_endpoint


def register(app: App) -> None:
    app.extensions[_STATE] = PendingCounts()


def check() -> None:
    """Refuse the request with 429 if it would add deliveries beyond the quota."""
    name = request.endpoint
    if name not in MAKE_JOBS and name not in QUEUE_DELIVERIES:
        return
    tenant, cap = g.get("tenant"), settings().webhook_tenant_pending_max
    if tenant is None or cap <= 0:
        return
    counts: PendingCounts | None = current_app.extensions.get(_STATE)
    if counts is None:
        return
    try:
        over, has_endpoint = counts.over(tenant, cap, settings().webhook_quota_cache_seconds)
    except PyMongoError as exc:
        # The request's own store write answers for an unavailable store.
        log.warning("pending deliveries not counted: %s", exc)
        return
    adds = name in QUEUE_DELIVERIES or has_endpoint or bool(request.headers.get("Callback-URL"))
    if over and adds:
        raise ApiError(
            429,
            f"Too many webhook deliveries pending: more than {cap} not yet delivered; "
            "retry once your receivers have caught up",
            {"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
