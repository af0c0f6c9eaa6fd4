"""The `batches` collection.

Counters are set from per-chunk facts under each chunk's own key and only
ever recomputed, never a bare `$inc` that a redelivered chunk would repeat.
"""

from __future__ import annotations

from datetime import datetime

from pymongo import ASCENDING

from worker.domain.documents import Doc, Tally
from worker.domain.statuses import BatchStatus
from worker.store import pages
from worker.store.connection import Store
from worker.store.secantus import update_then_read

VISIBLE = {"status": {"$ne": BatchStatus.VALIDATING}}


def ensure_indexes(store: Store) -> None:
    store.batches.create_index(
        [("tenant", ASCENDING), ("created_at", ASCENDING), ("_id", ASCENDING)]
    )
    store.batches.create_index([("status", ASCENDING), ("created_at", ASCENDING)])
    store.batches.create_index("expire_at", expireAfterSeconds=0)
    store.batches.create_index([("events_pending", ASCENDING)], sparse=True)


def insert(store: Store, batch: Doc) -> None:
    store.batches.insert_one(batch)


def exists(store: Store, batch_id: str) -> bool:
    """Whether the batch is stored at all, visible or not."""
    return store.batches.find_one({"_id": batch_id}, {"_id": 1}) is not None


def set_metadata_json(store: Store, tenant: str, batch_id: str, metadata_json: str) -> None:
    store.batches.update_one(
        {"_id": batch_id, "tenant": tenant}, {"$set": {"metadata_json": metadata_json}}
    )


def commit(store: Store, tenant: str, batch_id: str, *, now: int, total: int, chunks: int) -> Doc:
    """Make a stored batch visible; journaled, it also holds the writes before it."""
    # No chunk is sent before this returns, so nothing else changes it meanwhile.
    doc = update_then_read(
        store.journaled("batches"),
        {"_id": batch_id, "tenant": tenant, "status": BatchStatus.VALIDATING},
        {
            "$set": {
                "status": BatchStatus.IN_PROGRESS,
                "in_progress_at": now,
                "request_counts.total": total,
                "chunks": chunks,
                "tally": {},
            }
        },
    )
    assert doc is not None
    return doc


def delete(store: Store, tenant: str, batch_id: str, *, only_validating: bool = False) -> None:
    query: Doc = {"_id": batch_id, "tenant": tenant}
    if only_validating:
        query["status"] = BatchStatus.VALIDATING
    store.batches.delete_one(query)


def get(store: Store, tenant: str, batch_id: str) -> Doc | None:
    """The tenant's batch, once visible."""
    doc = store.batches.find_one({"_id": batch_id, "tenant": tenant})
    if doc is None or doc["status"] == BatchStatus.VALIDATING:
        return None
    return doc


def list_page(
    store: Store,
    tenant: str,
    *,
    limit: int,
    order: str = "desc",
    after: str | None = None,
    before: str | None = None,
) -> tuple[list[Doc], bool] | str:
    """A page, newest first by default as OpenAI lists batches; the name of the
    cursor (`after` or `before`) whose batch is unknown instead."""
    anchors: dict[str, Doc] = {}
    for name, cursor_id in (("after", after), ("before", before)):
        if cursor_id is not None:
            anchor = get(store, tenant, cursor_id)
            if anchor is None:
                return name
            anchors[name] = anchor
    return pages.window(
        store.batches,
        {"tenant": tenant, **VISIBLE},
        ascending=order == "asc",
        limit=limit,
        after=anchors.get("after"),
        before=anchors.get("before"),
    )


def add_tallies(store: Store, tenant: str, batch_id: str, tallies: dict[int, Tally]) -> Doc | None:
    """Record chunks' tallies, each under its own key; returns what is known now."""
    projection = {"tally": 1, "chunks": 1, "status": 1}
    query = {"_id": batch_id, "tenant": tenant}
    if not tallies:
        return store.batches.find_one(query, projection)
    return update_then_read(
        store.batches,
        query,
        {"$set": {f"tally.{seq}": list(tally) for seq, tally in tallies.items()}},
        projection,
    )


def tallied_seqs(store: Store, tenant: str, batch_id: str) -> list[int] | None:
    doc = store.batches.find_one({"_id": batch_id, "tenant": tenant}, {"tally": 1})
    return None if doc is None else [int(seq) for seq in doc.get("tally") or {}]


def finish(
    store: Store,
    tenant: str,
    batch_id: str,
    *,
    current: BatchStatus,
    final: BatchStatus,
    stamp: str,
    event: str,
    now: int,
    expire_at: datetime,
) -> bool:
    """Move the batch from `current` to `final`, owing `event` in the same write."""
    done = store.batches.update_one(
        {"_id": batch_id, "tenant": tenant, "status": current},
        {
            "$set": {
                "status": final,
                stamp: now,
                "expire_at": expire_at,
                # The outbox: the batch event is owed in the same write.
                "events_pending": event,
            }
        },
    )
    return done.matched_count == 1


def start_cancelling(store: Store, tenant: str, batch_id: str, now: int) -> None:
    store.batches.update_one(
        {"_id": batch_id, "tenant": tenant, "status": BatchStatus.IN_PROGRESS},
        {"$set": {"status": BatchStatus.CANCELLING, "cancelling_at": now}},
    )


# The reconciler's sweeps (see worker/services/reconciler.py): across tenants
# by nature, each returns `(tenant, batch id)` so what follows names the tenant.


def abandoned(store: Store, older_than: int) -> list[tuple[str, str]]:
    """Batches left `validating` this long: their edge died while storing them."""
    found = store.batches.find(
        {"status": BatchStatus.VALIDATING, "created_at": {"$lt": older_than}},
        {"_id": 1, "tenant": 1},
    )
    return [(doc["tenant"], doc["_id"]) for doc in found]


def unfinished(store: Store, limit: int) -> list[tuple[str, str]]:
    found = store.batches.find(
        {"status": {"$in": [BatchStatus.IN_PROGRESS, BatchStatus.CANCELLING]}},
        {"_id": 1, "tenant": 1},
        limit=limit,
    )
    return [(doc["tenant"], doc["_id"]) for doc in found]


def stale_outbox(store: Store, limit: int) -> list[tuple[str, str]]:
    found = store.batches.find(
        {"events_pending": {"$type": "string"}}, {"_id": 1, "tenant": 1}, limit=limit
    )
    return [(doc["tenant"], doc["_id"]) for doc in found]


def owing_event(store: Store, tenant: str, batch_id: str) -> Doc | None:
    return store.batches.find_one(
        {"_id": batch_id, "tenant": tenant, "events_pending": {"$type": "string"}}
    )


def event_flushed(store: Store, tenant: str, batch_id: str) -> None:
    store.batches.update_one(
        {"_id": batch_id, "tenant": tenant}, {"$unset": {"events_pending": ""}}
    )
