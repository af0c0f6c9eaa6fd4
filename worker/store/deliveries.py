"""The `webhook_deliveries` collection: one document per event and receiver, every
attempt recorded in it, the next one due at `next_attempt_at`."""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import cast

from pymongo import ASCENDING

from worker.domain.documents import Delivery, Doc
from worker.domain.statuses import DeliveryStatus
from worker.store import pages
from worker.store.connection import Store, insert_new


def _not_leased(now: float) -> Doc:
    return {"$or": [{"lease_expires": {"$exists": False}}, {"lease_expires": {"$lt": now}}]}


def ensure_indexes(store: Store) -> None:
    store.deliveries.create_index(
        [("tenant", ASCENDING), ("created_at", ASCENDING), ("_id", ASCENDING)]
    )
    store.deliveries.create_index([("status", ASCENDING), ("next_attempt_at", ASCENDING)])
    store.deliveries.create_index("expire_at", expireAfterSeconds=0)
    # A batch's job events, for its batch event's wait (`claim`).
    store.deliveries.create_index(
        [("batch_id", ASCENDING), ("status", ASCENDING)],
        partialFilterExpression={"batch_id": {"$type": "string"}},
    )


def insert(store: Store, deliveries: list[Delivery]) -> list[str]:
    """Insert deliveries; returns the ids of those that are new (a second flush
    of the same events makes none)."""
    skipped = insert_new(store.deliveries, [cast(Doc, d) for d in deliveries])
    return [d["_id"] for i, d in enumerate(deliveries) if i not in skipped]


def get(store: Store, tenant: str, delivery_id: str) -> Doc | None:
    return store.deliveries.find_one({"_id": delivery_id, "tenant": tenant})


def list_page(
    store: Store,
    tenant: str,
    *,
    status: str | None,
    limit: int,
    order: str = "asc",
    after: str | None = None,
    before: str | None = None,
) -> tuple[list[Doc], bool] | str:
    """A page, oldest first by default; the name of the cursor (`after` or
    `before`) whose delivery is unknown instead."""
    query: Doc = {"tenant": tenant}
    if status is not None:
        query["status"] = status
    anchors: dict[str, Doc] = {}
    for name, cursor_id in (("after", after), ("before", before)):
        if cursor_id is not None:
            anchor = store.deliveries.find_one(
                {"_id": cursor_id, "tenant": tenant}, {"created_at": 1}
            )
            if anchor is None:
                return name
            anchors[name] = anchor
    return pages.window(
        store.deliveries,
        query,
        ascending=order == "asc",
        limit=limit,
        after=anchors.get("after"),
        before=anchors.get("before"),
    )


def restart(store: Store, tenant: str, delivery_id: str, now: float, expire_at: datetime) -> bool:
    """Make a failed delivery pending again, its schedule starting over."""
    result = store.deliveries.update_one(
        {"_id": delivery_id, "tenant": tenant, "status": DeliveryStatus.FAILED},
        [
            {
                "$set": {
                    "status": DeliveryStatus.PENDING,
                    "next_attempt_at": now,
                    "swept_at": now,
                    # Earlier attempts stay recorded.
                    "retry_from": {"$size": "$attempts"},
                    "expire_at": expire_at,
                }
            },
            {"$unset": ["lease", "lease_expires"]},
        ],
    )
    return result.modified_count == 1


def sweep_due(store: Store, now: float, resend_after: float, limit: int = 1000) -> list[str]:
    """Deliveries due now and not sent recently; marks them sent. Sending one
    twice is harmless: an attempt claims its delivery under a lease."""
    ids = [
        doc["_id"]
        for doc in store.deliveries.find(
            {
                "status": DeliveryStatus.PENDING,
                "next_attempt_at": {"$lte": now},
                "swept_at": {"$lt": now - resend_after},
                **_not_leased(now),
            },
            {"_id": 1},
            limit=limit,
        )
    ]
    if ids:
        store.deliveries.update_many({"_id": {"$in": ids}}, {"$set": {"swept_at": now}})
    return ids


def claim(
    store: Store, delivery_id: str, now: float, lease_seconds: float
) -> tuple[Delivery, str] | None:
    """Lease the delivery for its attempt, if one is due and nobody holds it."""
    token = secrets.token_hex(16)
    # An update, then a read by _id with the lease checked here: SecantusDB
    # plans find_one_and_update as a scan of the collection, and reads by _id
    # alone fastest (see `units.claim`).
    taken = store.deliveries.update_one(
        {
            "_id": delivery_id,
            "status": DeliveryStatus.PENDING,
            "next_attempt_at": {"$lte": now},
            **_not_leased(now),
        },
        {"$set": {"lease": token, "lease_expires": now + lease_seconds}},
    )
    if taken.matched_count == 0:
        return None
    doc = store.deliveries.find_one({"_id": delivery_id})
    if doc is None or doc.get("lease") != token:
        return None
    if doc.get("after_jobs_of") and _jobs_unattempted(store, doc["tenant"], doc["after_jobs_of"]):
        # A batch event waits until each of its job events had a first attempt.
        defer(store, delivery_id, token, now + JOB_EVENTS_WAIT)
        return None
    return cast(Delivery, doc), token


# How soon a batch event whose job events are not all attempted yet is due again.
JOB_EVENTS_WAIT = 1.0


def _jobs_unattempted(store: Store, tenant: str, batch_id: str) -> bool:
    """Whether a job event of the batch has not had its first attempt: one still
    owed by a chunk (not yet a delivery), or a pending delivery without one."""
    owed = store.jobs.find_one(
        {"batch_id": batch_id, "tenant": tenant, "events_pending": True}, {"_id": 1}
    )
    if owed is not None:
        return True
    waiting = store.deliveries.find_one(
        {
            "batch_id": batch_id,
            "tenant": tenant,
            "status": DeliveryStatus.PENDING,
            "attempts": {"$size": 0},
        },
        {"_id": 1},
    )
    return waiting is not None


def defer(store: Store, delivery_id: str, token: str, due: float) -> bool:
    """Give the lease back with the delivery due at `due`, no attempt recorded;
    the sweep sends it then."""
    result = store.deliveries.update_one(
        {"_id": delivery_id, "lease": token},
        {
            "$set": {"next_attempt_at": due, "swept_at": 0},
            "$unset": {"lease": "", "lease_expires": ""},
        },
    )
    return result.modified_count == 1


def record_attempt(store: Store, delivery_id: str, token: str, attempt: Doc, update: Doc) -> bool:
    """Record an attempt and what follows, fenced by its lease."""
    result = store.deliveries.update_one(
        {"_id": delivery_id, "lease": token},
        {
            "$set": update,
            "$push": {"attempts": attempt},
            "$unset": {"lease": "", "lease_expires": ""},
        },
    )
    return result.modified_count == 1
