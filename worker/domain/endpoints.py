"""Webhook endpoints: what one is for the concurrency caps, and the health of the
tenant's endpoint (the circuit breaker).

One cap counts attempts in flight per tenant and origin (scheme, host, port),
whatever the path: one slow receiver cannot take every delivery slot, and one
tenant's cannot take another's. A second counts them per tenant, whatever the
origin: a tenant whose callbacks name many slow origins cannot take them all.

The breaker watches the tenant's endpoint (`PUT /v1/webhook_endpoint`). Each
failed attempt to it counts; while it fails, one attempt at a time probes it,
spaced by the retry schedule (after its n-th failure in a row, not before the
schedule's n-th wait), and the other deliveries to it wait without spending
attempts. A success closes the breaker. An endpoint that has failed for
`webhook_disable_after_seconds` without a success is disabled, and so is one
that answers `410 Gone` (as Standard Webhooks says): deliveries to it are kept
as failed ("endpoint disabled") without being attempted, until the tenant
enables it again (`PUT` or `POST /v1/webhook_endpoint/enable`) and recovers
them (`POST /v1/webhook_deliveries/recover`).
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from urllib.parse import urlsplit

from worker.domain.documents import Doc
from worker.domain.retries import jitter

# Fields of the tenant's document that hold its endpoint's health.
FAILING_SINCE = "endpoint_failing_since"
FAILURES = "endpoint_failures"
RETRY_AT = "endpoint_retry_at"
DISABLED_AT = "endpoint_disabled_at"
DISABLED_REASON = "endpoint_disabled_reason"
HEALTH = (FAILING_SINCE, FAILURES, RETRY_AT, DISABLED_AT, DISABLED_REASON)

# What a delivery held while its endpoint is disabled says.
DISABLED_ERROR = "endpoint disabled"
# Why an endpoint was disabled: the metrics' label, and what GET says.
GONE, FAILING = "gone", "failing"

DEFAULT_PORTS = {"http": 80, "https": 443}


def origin(url: str) -> str:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port or DEFAULT_PORTS.get(scheme, 0)
    except ValueError:
        port = 0
    return f"{scheme}://{(parts.hostname or '').lower()}:{port}"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def tenant_slot_key(tenant: str) -> str:
    """The name of the cap on the tenant's attempts in flight, whatever the origin.
    In braces: a Redis Cluster keeps it in one hash slot with the tenant's
    endpoint caps, which one script takes together."""
    return "{" + _digest(tenant) + "}"


def slot_key(tenant: str, url: str) -> str:
    """The name of the per-endpoint cap an attempt to `url` counts against."""
    return tenant_slot_key(tenant) + ":" + _digest(tenant + "\0" + origin(url))


def is_endpoint(tenant: Doc | None, url: str) -> bool:
    """Whether a delivery to `url` goes to the tenant's endpoint (the breaker's concern)."""
    return tenant is not None and tenant.get("webhook_url") == url


def spacing(schedule: tuple[float, ...], failures: int) -> float:
    """Seconds before the endpoint is tried again after `failures` failures in a row."""
    if not schedule:
        return 0.0
    return schedule[min(failures, len(schedule) - 1)] * jitter(0.9, 1.1)


def disabled_reason(reason: str, failing_since: float | None) -> str:
    """What `GET /v1/webhook_endpoint` says of why the endpoint was disabled."""
    if reason == GONE:
        return "gone: the endpoint answered 410 Gone"
    return f"failing: no successful delivery since {_iso(failing_since)}"


def endpoint_public(tenant: Doc) -> Doc:
    """`GET /v1/webhook_endpoint`: the URL and the endpoint's state."""
    failing_since = tenant.get(FAILING_SINCE)
    disabled_at = tenant.get(DISABLED_AT)
    return {
        "object": "webhook_endpoint",
        "url": tenant["webhook_url"],
        "status": "disabled" if disabled_at is not None else "enabled",
        "failing_since": None if failing_since is None else int(failing_since),
        "disabled_at": None if disabled_at is None else int(disabled_at),
        "disabled_reason": (
            None
            if disabled_at is None
            else tenant.get(DISABLED_REASON) or disabled_reason(FAILING, failing_since)
        ),
    }


def _iso(at: float | None) -> str:
    if at is None:
        return "?"
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
