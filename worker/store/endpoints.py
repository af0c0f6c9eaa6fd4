"""The tenant's webhook endpoint, kept in its tenant's document: the URL and its
health (see `worker.domain.endpoints`).

Every health write names the URL it is about, so the result of an attempt
to a URL the tenant has since replaced changes nothing.
"""

from __future__ import annotations

from pymongo import ReturnDocument

from worker.domain.documents import Doc
from worker.domain.endpoints import (
    DISABLED_AT,
    DISABLED_REASON,
    FAILING_SINCE,
    FAILURES,
    HEALTH,
    RETRY_AT,
)
from worker.store.connection import Store

_CLEAR_HEALTH = dict.fromkeys(HEALTH, "")
_ENABLED = {DISABLED_AT: {"$exists": False}}


def get(store: Store, tenant: str) -> Doc | None:
    """The tenant's document with its endpoint, if it has one."""
    return store.tenants.find_one(
        {"_id": tenant, "webhook_url": {"$type": "string"}},
        {"webhook_url": 1, **dict.fromkeys(HEALTH, 1)},
    )


def set_url(store: Store, tenant: str, url: str) -> Doc | None:
    """Set the endpoint; it starts enabled and healthy, whatever the one before was."""
    return store.tenants.find_one_and_update(
        {"_id": tenant},
        {"$set": {"webhook_url": url}, "$unset": _CLEAR_HEALTH},
        return_document=ReturnDocument.AFTER,
    )


def clear(store: Store, tenant: str) -> bool:
    """Remove the endpoint; False when there was none."""
    result = store.tenants.update_one(
        {"_id": tenant, "webhook_url": {"$type": "string"}},
        {"$unset": {"webhook_url": "", **_CLEAR_HEALTH}},
    )
    return result.modified_count == 1


def enable(store: Store, tenant: str) -> Doc | None:
    """Enable the endpoint and forget its failures; None when there is none."""
    return store.tenants.find_one_and_update(
        {"_id": tenant, "webhook_url": {"$type": "string"}},
        {"$unset": _CLEAR_HEALTH},
        return_document=ReturnDocument.AFTER,
    )


def take_probe(store: Store, tenant: str, url: str, now: float, hold_until: float) -> bool:
    """Take the one attempt a failing endpoint may have now; the others wait until
    `hold_until`, when a probe that never reported is taken to have failed."""
    result = store.tenants.update_one(
        {"_id": tenant, "webhook_url": url, RETRY_AT: {"$lte": now}, **_ENABLED},
        {"$set": {RETRY_AT: hold_until}},
    )
    return result.modified_count == 1


def delivered(store: Store, tenant: str, url: str) -> None:
    """A success closes the breaker (a disabled endpoint stays disabled)."""
    store.tenants.update_one(
        {"_id": tenant, "webhook_url": url, FAILURES: {"$exists": True}, **_ENABLED},
        {"$unset": {FAILING_SINCE: "", FAILURES: "", RETRY_AT: ""}},
    )


def failed(store: Store, tenant: str, url: str, now: float) -> Doc | None:
    """Count a failed attempt; the health as it is now, None if the endpoint
    changed or is disabled."""
    return store.tenants.find_one_and_update(
        {"_id": tenant, "webhook_url": url, **_ENABLED},
        {"$min": {FAILING_SINCE: now}, "$inc": {FAILURES: 1}},
        dict.fromkeys(HEALTH, 1),
        return_document=ReturnDocument.AFTER,
    )


def space(store: Store, tenant: str, url: str, failures: int, retry_at: float) -> None:
    """No attempt before `retry_at`, unless another failure or a success came since."""
    store.tenants.update_one(
        {"_id": tenant, "webhook_url": url, FAILURES: failures, **_ENABLED},
        {"$set": {RETRY_AT: retry_at}},
    )


def disable(
    store: Store, tenant: str, url: str, now: float, reason: str, failing_before: float | None
) -> bool:
    """Disable the endpoint, saying why; with `failing_before`, only if it has been
    failing since before then. False when it changed or was disabled already."""
    query: Doc = {"_id": tenant, "webhook_url": url, **_ENABLED}
    if failing_before is not None:
        query[FAILING_SINCE] = {"$lte": failing_before}
    result = store.tenants.update_one(query, {"$set": {DISABLED_AT: now, DISABLED_REASON: reason}})
    return result.modified_count == 1
