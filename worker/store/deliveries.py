"""The `webhook_deliveries` collection: one document per event and receiver, every
attempt recorded in it, the next one due at `next_attempt_at`."""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import cast

from pymongo import ASCENDING, UpdateOne

from worker.domain.documents import Delivery, Doc
from worker.domain.statuses import DeliveryStatus
from worker.store import pages
from worker.store.connection import Store, insert_new
from worker.store.secantus import update_then_read


def _not_leased(now: float) -> Doc:
    return {"$or": [{"lease_expires": {"$exists": False}}, {"lease_expires": {"$lt": now}}]}


def ensure_indexes(store: Store) -> None:
    store.deliveries.create_index(
        [("tenant", ASCENDING), ("created_at", ASCENDING), ("_id", ASCENDING)]
    )
    store.deliveries.create_index([("status", ASCENDING), ("next_attempt_at", ASCENDING)])
    # The tenant's deliveries in one status, oldest first: the list filtered by
    # status, the count of pending ones (the quota) and recovery of failed ones.
    store.deliveries.create_index(
        [
            ("tenant", ASCENDING),
            ("status", ASCENDING),
            ("created_at", ASCENDING),
            ("_id", ASCENDING),
        ]
    )
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


def count_pending(store: Store, tenant: str, limit: int, max_time_ms: int) -> int:
    """The tenant's undelivered deliveries, counted up to `limit`: an index range
    read that stops there, so the count costs at most `limit` index keys."""
    return store.deliveries.count_documents(
        {"tenant": tenant, "status": DeliveryStatus.PENDING}, limit=limit, maxTimeMS=max_time_ms
    )


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
            {"$unset": ["lease", "lease_expires", "error", "waiting"]},
        ],
    )
    return result.modified_count == 1


def recover(
    store: Store,
    tenant: str,
    *,
    since: int,
    until: int | None,
    event_type: str | None,
    now: float,
    per_second: float,
    limit: int,
    expire_at: datetime,
) -> tuple[int, bool]:
    """Make the tenant's failed deliveries created in [since, until] pending again,
    oldest first, due one after another at `per_second`; the sweep sends each
    when it is due. Returns how many, and whether more were left for a later call."""
    query: Doc = {"tenant": tenant, "status": DeliveryStatus.FAILED, "created_at": {"$gte": since}}
    if until is not None:
        query["created_at"]["$lte"] = until
    if event_type is not None:
        query["event_type"] = event_type
    found = list(
        store.deliveries.find(query, {"_id": 1})
        .sort([("created_at", ASCENDING), ("_id", ASCENDING)])
        .limit(limit + 1)
    )
    ids, more = [doc["_id"] for doc in found[:limit]], len(found) > limit
    step = 1 / per_second if per_second > 0 else 0.0
    writes = [
        UpdateOne(
            {"_id": delivery_id, "tenant": tenant, "status": DeliveryStatus.FAILED},
            [
                {
                    "$set": {
                        "status": DeliveryStatus.PENDING,
                        "next_attempt_at": now + index * step,
                        "swept_at": 0,
                        "retry_from": {"$size": "$attempts"},
                        "expire_at": expire_at,
                    }
                },
                {"$unset": ["lease", "lease_expires", "error", "waiting"]},
            ],
        )
        for index, delivery_id in enumerate(ids)
    ]
    if not writes:
        return 0, False
    result = store.deliveries.bulk_write(writes, ordered=False)
    return result.modified_count, more


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
    # The lease is checked in what is read back (`secantus.update_then_read`).
    doc = update_then_read(
        store.deliveries,
        {
            "_id": delivery_id,
            "status": DeliveryStatus.PENDING,
            "next_attempt_at": {"$lte": now},
            **_not_leased(now),
        },
        {"$set": {"lease": token, "lease_expires": now + lease_seconds}},
    )
    if doc is None or doc.get("lease") != token:
        return None
    if doc.get("after_jobs_of") and _jobs_unattempted(store, doc["tenant"], doc["after_jobs_of"]):
        # A batch event waits until each of its job events had a first attempt.
        defer(store, delivery_id, token, now + JOB_EVENTS_WAIT, waiting=False)
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


def defer(store: Store, delivery_id: str, token: str, due: float, waiting: bool) -> bool:
    """Give the lease back with the delivery due at `due`, no attempt recorded;
    the sweep sends it then. `waiting`: it waits for a slot, and `wake` may
    make it due sooner."""
    update: Doc = {
        "$set": {"next_attempt_at": due, "swept_at": 0},
        "$unset": {"lease": "", "lease_expires": ""},
    }
    if waiting:
        update["$set"]["waiting"] = True
    else:
        update["$unset"]["waiting"] = ""
    result = store.deliveries.update_one({"_id": delivery_id, "lease": token}, update)
    return result.modified_count == 1


def wake(store: Store, delivery_id: str, now: float) -> bool:
    """Make a delivery that waits for a slot due now; False when it no longer
    waits (attempted since, or taken by the sweep)."""
    result = store.deliveries.update_one(
        {
            "_id": delivery_id,
            "status": DeliveryStatus.PENDING,
            "waiting": True,
            **_not_leased(now),
        },
        {"$set": {"next_attempt_at": now, "swept_at": now}, "$unset": {"waiting": ""}},
    )
    return result.modified_count == 1


def due_now(store: Store, tenant: str, url: str, now: float, limit: int = 1000) -> list[str]:
    """Make the deliveries to `url` that wait (for a slot, or for a failing
    endpoint's breaker) due now, as `wake` does; returns the ids of at most
    `limit` of them to send now (the sweep sends the others, due now too)."""
    query = {
        "tenant": tenant,
        "url": url,
        "status": DeliveryStatus.PENDING,
        "next_attempt_at": {"$gt": now},
        **_not_leased(now),
    }
    ids = [doc["_id"] for doc in store.deliveries.find(query, {"_id": 1}, limit=limit)]
    if ids:
        store.deliveries.update_many(
            query,
            {"$set": {"next_attempt_at": now, "swept_at": now}, "$unset": {"waiting": ""}},
        )
    return ids


def hold(store: Store, delivery_id: str, token: str, error: str, expire_at: datetime) -> bool:
    """End the delivery as failed without an attempt, saying why (its endpoint
    is disabled), fenced by its lease."""
    result = store.deliveries.update_one(
        {"_id": delivery_id, "lease": token},
        {
            "$set": {"status": DeliveryStatus.FAILED, "error": error, "expire_at": expire_at},
            "$unset": {"lease": "", "lease_expires": "", "waiting": ""},
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
            "$unset": {"lease": "", "lease_expires": "", "waiting": ""},
        },
    )
    return result.modified_count == 1
