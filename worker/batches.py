"""Batches: many requests stored as chunk units, counted from the units themselves.

No multi-document transactions: a batch is stored as `validating` (invisible,
not sent) until every chunk is in, and the reconciler removes one a crash
left half-stored. Counters are recomputed from the chunks and only ever
raised (`$max`), so a redelivered chunk cannot count twice.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from pymongo import ASCENDING, ReturnDocument

from worker import webhooks
from worker.retention import expire_at
from worker.runtime import Runtime
from worker.store import Doc, Store

OPEN_UNIT_STATES = ("queued", "in_progress")


def ensure_indexes(store: Store) -> None:
    store.batches.create_index(
        [("tenant", ASCENDING), ("created_at", ASCENDING), ("_id", ASCENDING)]
    )
    store.batches.create_index([("status", ASCENDING), ("created_at", ASCENDING)])
    store.batches.create_index("expire_at", expireAfterSeconds=0)


def new_batch(
    *,
    batch_id: str,
    tenant: str,
    total: int,
    now: int,
    callback_url: str | None,
    metadata: dict[str, Any],
    job_events: bool,
    request_id: str | None,
) -> Doc:
    return {
        "_id": batch_id,
        "tenant": tenant,
        "status": "validating",
        "created_at": now,
        "in_progress_at": None,
        "completed_at": None,
        "cancelling_at": None,
        "cancelled_at": None,
        "request_counts": {"total": total, "completed": 0, "failed": 0, "cancelled": 0},
        "callback_url": callback_url,
        "metadata": metadata,
        "job_events": job_events,
        "request_id": request_id,
    }


def public(doc: Doc) -> Doc:
    return {
        "id": doc["_id"],
        "object": "batch",
        "status": doc["status"],
        "created_at": doc["created_at"],
        "in_progress_at": doc.get("in_progress_at"),
        "completed_at": doc.get("completed_at"),
        "cancelling_at": doc.get("cancelling_at"),
        "cancelled_at": doc.get("cancelled_at"),
        "request_counts": doc["request_counts"],
        "callback_url": doc.get("callback_url"),
        "metadata": doc.get("metadata") or {},
    }


def get(store: Store, tenant: str, batch_id: str) -> Doc | None:
    return store.batches.find_one(
        {"_id": batch_id, "tenant": tenant, "status": {"$ne": "validating"}}
    )


def counts(store: Store, batch_id: str) -> tuple[dict[str, int], bool]:
    """Counts recomputed from the chunks, and whether any chunk is still open."""
    completed = failed = cancelled = 0
    still_open = False
    for unit in store.jobs.find({"batch_id": batch_id}, {"codes": 1, "status": 1}):
        codes = unit["codes"]
        completed += sum(1 for code in codes if code == 200)
        failed += sum(1 for code in codes if code is not None and code != 200)
        if unit["status"] == "cancelled":
            cancelled += sum(1 for code in codes if code is None)
        elif unit["status"] in OPEN_UNIT_STATES:
            still_open = True
    return {"completed": completed, "failed": failed, "cancelled": cancelled}, still_open


def refresh(rt: Runtime, batch_id: str) -> None:
    """Bring a batch's counters and status up to what its chunks say."""
    tally, still_open = counts(rt.store, batch_id)
    rt.store.batches.update_one(
        {"_id": batch_id},
        {"$max": {f"request_counts.{name}": value for name, value in tally.items()}},
    )
    if still_open:
        return
    now = int(time.time())
    for current, final, stamp, event in (
        ("in_progress", "completed", "completed_at", "batch.completed"),
        ("cancelling", "cancelled", "cancelled_at", "batch.cancelled"),
    ):
        doc = rt.store.batches.find_one_and_update(
            {"_id": batch_id, "status": current},
            {
                "$set": {
                    "status": final,
                    stamp: now,
                    "expire_at": expire_at(rt.settings, now),
                    # The outbox: the batch event is owed in the same write.
                    "events_pending": event,
                }
            },
            return_document=ReturnDocument.AFTER,
        )
        if doc is not None:
            webhooks.flush_batch_event(rt, batch_id)
            return


def cancel(rt: Runtime, tenant: str, batch_id: str) -> Doc | None:
    """Cancel the chunks not yet started; started ones finish."""
    now = int(time.time())
    rt.store.batches.update_one(
        {"_id": batch_id, "tenant": tenant, "status": "in_progress"},
        {"$set": {"status": "cancelling", "cancelling_at": now}},
    )
    doc = get(rt.store, tenant, batch_id)
    if doc is None:
        return None
    if doc["status"] == "cancelling":
        rt.store.jobs.update_many(
            {"batch_id": batch_id, "status": "queued"},
            {
                "$set": {
                    "status": "cancelled",
                    "completed_at": now,
                    "expire_at": expire_at(rt.settings, now),
                }
            },
        )
        refresh(rt, batch_id)
        doc = get(rt.store, tenant, batch_id)
    return doc


def iter_results(store: Store, batch_id: str, status: str | None) -> Iterator[Doc]:
    """Finished requests in input order, one chunk in memory at a time."""
    import json

    for unit in store.jobs.find({"batch_id": batch_id}, sort=[("seq", ASCENDING)], batch_size=2):
        for index, item in enumerate(unit["items"]):
            code = unit["codes"][index]
            if code is None:
                if unit["status"] != "cancelled":
                    continue
                if status not in (None, "cancelled"):
                    continue
                yield {
                    "custom_id": item["custom_id"],
                    "job_id": item["id"],
                    "status_code": None,
                    "body": None,
                    "status": "cancelled",
                }
                continue
            outcome = "succeeded" if code == 200 else "failed"
            if status is not None and status != outcome:
                continue
            yield {
                "custom_id": item["custom_id"],
                "job_id": item["id"],
                "status_code": code,
                "body": json.loads(unit["results"][index]),
            }
