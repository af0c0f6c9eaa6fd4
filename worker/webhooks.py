"""Webhook events: from the outbox of finished jobs and batches to delivery records.

A finished unit or batch carries `events_pending` in the same write as its
result. Flushing turns that into delivery documents whose ids are derived
from the event itself, so flushing twice (after a crash in between) creates
nothing new. Deliveries are then sent by `delivery.attempt`, due ones picked
up by a periodic sweep: waits live in MongoDB, never in the broker.
"""

from __future__ import annotations

import hashlib
import json
import time
from datetime import UTC, datetime

from pymongo import ASCENDING

from worker import jobs
from worker.ids import RANDOM_CHARS
from worker.retention import expire_at
from worker.runtime import Runtime
from worker.store import Doc, Store, insert_new

_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
DELIVERY_STATUSES = ("pending", "delivered", "failed")
# A due delivery is sent again by the sweep only if it was not sent this
# recently: its message may still be queued behind others.
RESEND_AFTER_SECONDS = 30


def ensure_indexes(store: Store) -> None:
    store.deliveries.create_index(
        [("tenant", ASCENDING), ("created_at", ASCENDING), ("_id", ASCENDING)]
    )
    store.deliveries.create_index([("status", ASCENDING), ("next_attempt_at", ASCENDING)])
    store.deliveries.create_index("expire_at", expireAfterSeconds=0)
    store.batches.create_index([("events_pending", ASCENDING)], sparse=True)


def message_id(*parts: str) -> str:
    """A `msg_` id fixed by the event, so re-flushing an event is a no-op."""
    number = int.from_bytes(hashlib.sha256("\0".join(parts).encode()).digest(), "big")
    chars = []
    for _ in range(RANDOM_CHARS + 4):
        number, digit = divmod(number, 62)
        chars.append(_ALPHABET[digit])
    return "msg_" + "".join(chars)


def event_body(event_type: str, data: Doc) -> str:
    payload = {
        "type": event_type,
        "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "data": data,
    }
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


def new_delivery(
    rt: Runtime, *, msg_id: str, tenant: str, event_type: str, url: str, body: str
) -> Doc:
    now = time.time()
    return {
        "_id": msg_id,
        "tenant": tenant,
        "event_type": event_type,
        "url": url,
        "body": body,
        "status": "pending",
        "attempts": [],
        "next_attempt_at": now,
        # Its first attempt is sent at once, so the sweep leaves it alone a while.
        "swept_at": now,
        "created_at": int(now),
        "expire_at": expire_at(rt.settings, now),
    }


def _insert_new(rt: Runtime, deliveries: list[Doc]) -> list[str]:
    """Insert deliveries; those already there (a second flush) are skipped."""
    skipped = insert_new(rt.store.deliveries, deliveries)
    return [d["_id"] for i, d in enumerate(deliveries) if i not in skipped]


def tenant_urls(rt: Runtime, tenants: set[str]) -> dict[str, str | None]:
    docs = rt.store.tenants.find({"_id": {"$in": list(tenants)}}, {"webhook_url": 1})
    return {doc["_id"]: doc.get("webhook_url") for doc in docs}


def flush_unit_events(rt: Runtime, unit_ids: list[str]) -> None:
    """Turn finished units' owed job events into deliveries, and send them."""
    if not unit_ids:
        return
    units = list(rt.store.jobs.find({"_id": {"$in": unit_ids}, "events_pending": True}))
    if not units:
        return
    urls = tenant_urls(rt, {unit["tenant"] for unit in units})
    deliveries = []
    for unit in units:
        url = unit.get("callback_url") or urls.get(unit["tenant"])
        if not url or not unit.get("job_events", True):
            continue
        for index in range(len(unit["items"])):
            job = jobs.job_public(unit, index)
            event_type = "job.succeeded" if job["status"] == "succeeded" else "job.failed"
            deliveries.append(
                new_delivery(
                    rt,
                    msg_id=message_id(job["id"], event_type),
                    tenant=unit["tenant"],
                    event_type=event_type,
                    url=url,
                    body=event_body(event_type, job),
                )
            )
    created = _insert_new(rt, deliveries)
    rt.store.jobs.update_many(
        {"_id": {"$in": [unit["_id"] for unit in units]}}, {"$unset": {"events_pending": ""}}
    )
    send(rt, created)


def flush_batch_event(rt: Runtime, batch_id: str) -> None:
    from worker import batches

    doc = rt.store.batches.find_one({"_id": batch_id, "events_pending": {"$type": "string"}})
    if doc is None:
        return
    url = doc.get("callback_url") or tenant_urls(rt, {doc["tenant"]}).get(doc["tenant"])
    created: list[str] = []
    if url:
        event_type = doc["events_pending"]
        created = _insert_new(
            rt,
            [
                new_delivery(
                    rt,
                    msg_id=message_id(batch_id, event_type),
                    tenant=doc["tenant"],
                    event_type=event_type,
                    url=url,
                    body=event_body(event_type, batches.public(doc)),
                )
            ],
        )
    rt.store.batches.update_one({"_id": batch_id}, {"$unset": {"events_pending": ""}})
    send(rt, created)


def send(rt: Runtime, delivery_ids: list[str]) -> None:
    """Queue first attempts now; if the broker is down, the sweep sends them."""
    from worker import tasks

    for delivery_id in delivery_ids:
        try:
            tasks.send_delivery(delivery_id)
        except Exception:  # the sweep finds it due and sends it
            return


def public(doc: Doc) -> Doc:
    return {
        "id": doc["_id"],
        "object": "webhook_delivery",
        "event_type": doc["event_type"],
        "url": doc["url"],
        "status": doc["status"],
        "attempts": doc["attempts"],
        "next_attempt_at": int(doc["next_attempt_at"]) if doc["status"] == "pending" else None,
        "created_at": doc["created_at"],
    }


def list_page(
    store: Store, tenant: str, *, status: str | None, limit: int, after: str | None
) -> tuple[list[Doc], bool] | None:
    query: Doc = {"tenant": tenant}
    if status is not None:
        query["status"] = status
    if after is not None:
        anchor = store.deliveries.find_one({"_id": after, "tenant": tenant}, {"created_at": 1})
        if anchor is None:
            return None
        query["$or"] = [
            {"created_at": {"$gt": anchor["created_at"]}},
            {"created_at": anchor["created_at"], "_id": {"$gt": after}},
        ]
    docs = list(store.deliveries.find(query, sort=[("created_at", 1), ("_id", 1)], limit=limit + 1))
    return docs[:limit], len(docs) > limit


def get(store: Store, tenant: str, delivery_id: str) -> Doc | None:
    return store.deliveries.find_one({"_id": delivery_id, "tenant": tenant})


def retry(rt: Runtime, tenant: str, delivery_id: str) -> tuple[Doc | None, bool]:
    """Send a failed delivery again, with the same webhook-id.

    Returns the delivery as it is now (None when the tenant has no such
    delivery) and whether this call queued it again.
    """
    now = time.time()
    result = rt.store.deliveries.update_one(
        {"_id": delivery_id, "tenant": tenant, "status": "failed"},
        [
            {
                "$set": {
                    "status": "pending",
                    "next_attempt_at": now,
                    "swept_at": now,
                    # The schedule starts over: earlier attempts stay recorded.
                    "retry_from": {"$size": "$attempts"},
                    "expire_at": expire_at(rt.settings, now),
                }
            },
            {"$unset": ["lease", "lease_expires"]},
        ],
    )
    resent = bool(result.modified_count)
    if resent:
        send(rt, [delivery_id])
    return get(rt.store, tenant, delivery_id), resent


def due(rt: Runtime, limit: int = 1000) -> list[str]:
    """Deliveries due now and not sent recently; marks them sent. Sending one
    twice is harmless: an attempt claims its delivery under a lease."""
    now = time.time()
    ids = [
        doc["_id"]
        for doc in rt.store.deliveries.find(
            {
                "status": "pending",
                "next_attempt_at": {"$lte": now},
                "swept_at": {"$lt": now - RESEND_AFTER_SECONDS},
                "$or": [{"lease_expires": {"$exists": False}}, {"lease_expires": {"$lt": now}}],
            },
            {"_id": 1},
            limit=limit,
        )
    ]
    if ids:
        rt.store.deliveries.update_many({"_id": {"$in": ids}}, {"$set": {"swept_at": now}})
    return ids


def pending_outbox(rt: Runtime, older_than: float) -> tuple[list[str], list[str]]:
    """Units and batches whose owed events were never flushed (a crash in between)."""
    units = [
        doc["_id"]
        for doc in rt.store.jobs.find(
            {"events_pending": True, "completed_at": {"$lt": older_than}}, {"_id": 1}, limit=1000
        )
    ]
    batch_ids = [
        doc["_id"]
        for doc in rt.store.batches.find(
            {"events_pending": {"$type": "string"}}, {"_id": 1}, limit=1000
        )
    ]
    return units, batch_ids
