"""Webhook events and the delivery documents that carry them."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

from worker.domain.documents import Delivery, Doc
from worker.domain.ids import RANDOM_CHARS
from worker.domain.statuses import DeliveryStatus, JobStatus

_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def message_id(*parts: str) -> str:
    """A `msg_` id fixed by the event, so re-flushing an event is a no-op."""
    number = int.from_bytes(hashlib.sha256("\0".join(parts).encode()).digest(), "big")
    chars = []
    for _ in range(RANDOM_CHARS + 4):
        number, digit = divmod(number, 62)
        chars.append(_ALPHABET[digit])
    return "msg_" + "".join(chars)


TEST_EVENT = "webhook.test"


def test_event_data(tenant: str, url: str, now: float) -> Doc:
    """What a test event (`POST /v1/webhook_endpoint/test`) carries."""
    return {
        "object": "webhook_endpoint.test",
        "url": url,
        "requested_at": int(now),
        "message": "A test event: the endpoint receives this tenant's events, signed.",
    }


def job_event_type(job: Doc) -> str:
    return "job.succeeded" if job["status"] == JobStatus.SUCCEEDED else "job.failed"


def event_body(event_type: str, data: Doc) -> str:
    payload = {
        "type": event_type,
        "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "data": data,
    }
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


def destination(callback_url: str | None, tenant_url: str | None) -> str | None:
    """Where an event goes: the request's Callback-URL, else the tenant's endpoint."""
    return callback_url or tenant_url


def new_delivery(
    *,
    msg_id: str,
    tenant: str,
    event_type: str,
    url: str,
    body: str,
    now: float,
    expire_at: datetime,
) -> Delivery:
    return {
        "_id": msg_id,
        "tenant": tenant,
        "event_type": event_type,
        "url": url,
        "body": body,
        "status": DeliveryStatus.PENDING,
        "attempts": [],
        "next_attempt_at": now,
        # Its first attempt is sent at once, so the sweep leaves it alone a while.
        "swept_at": now,
        "created_at": int(now),
        "expire_at": expire_at,
    }


def delivery_public(doc: Doc) -> Doc:
    return {
        "id": doc["_id"],
        "object": "webhook_delivery",
        "event_type": doc["event_type"],
        "url": doc["url"],
        "status": doc["status"],
        # Why a delivery ended without an attempt ("endpoint disabled").
        "error": doc.get("error"),
        "attempts": [{"response": None, **attempt} for attempt in doc["attempts"]],
        "next_attempt_at": (
            int(doc["next_attempt_at"]) if doc["status"] == DeliveryStatus.PENDING else None
        ),
        "created_at": doc["created_at"],
    }
