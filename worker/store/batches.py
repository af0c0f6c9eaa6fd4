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


def set_metadata_json(store: Store, batch_id: str, metadata_json: str) -> None:
    store.batches.update_one({"_id": batch_id}, {"$set": {"metadata_json": metadata_json}})


def commit(store: Store, batch_id: str, *, now: int, total: int, chunks: int) -> Doc:
    """Make a stored batch visible; journaled, it also holds the writes before it."""
    # Updates by _id, then reads (here and below): SecantusDB plans
    # find_one_and_update as a scan of the collection (see `units.claim`). No
    # chunk is sent before this returns, so nothing else changes it meanwhile.
    written = store.journaled("batches").update_one(
        {"_id": batch_id, "status": BatchStatus.VALIDATING},
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
    assert written.matched_count == 1
    doc = store.batches.find_one({"_id": batch_id})
    assert doc is not None
    return doc


def delete(store: Store, batch_id: str, *, only_validating: bool = False) -> None:
    query: Doc = {"_id": batch_id}
    if only_validating:
        query["status"] = BatchStatus.VALIDATING
    store.batches.delete_one(query)


def get(store: Store, tenant: str, batch_id: str) -> Doc | None:
    """The tenant's batch, once visible. Read by `_id` alone and checked here:
    SecantusDB plans a filter of more fields by trying every index in turn,
    which made each poll of a batch cost it several times the read."""
    doc = store.batches.find_one({"_id": batch_id})
    if doc is None or doc["tenant"] != tenant or doc["status"] == BatchStatus.VALIDATING:
        return None
    return doc


def list_page(
    store: Store, tenant: str, *, limit: int, after: str | None
) -> tuple[list[Doc], bool] | None:
    """Newest first, as OpenAI lists batches; None when `after` is unknown."""
    query: Doc = {"tenant": tenant, **VISIBLE}
    if after is not None:
        anchor = get(store, tenant, after)
        if anchor is None:
            return None
        query.update(pages.beyond(anchor, ascending=False))
    return pages.read(store.batches, query, ascending=False, limit=limit)


def add_tallies(store: Store, batch_id: str, tallies: dict[int, Tally]) -> Doc | None:
    """Record chunks' tallies, each under its own key; returns what is known now."""
    projection = {"tally": 1, "chunks": 1, "status": 1}
    if not tallies:
        return store.batches.find_one({"_id": batch_id}, projection)
    store.batches.update_one(
        {"_id": batch_id},
        {"$set": {f"tally.{seq}": list(tally) for seq, tally in tallies.items()}},
    )
    return store.batches.find_one({"_id": batch_id}, projection)


def tallied_seqs(store: Store, batch_id: str) -> list[int] | None:
    doc = store.batches.find_one({"_id": batch_id}, {"tally": 1})
    return None if doc is None else [int(seq) for seq in doc.get("tally") or {}]


def finish(
    store: Store,
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
        {"_id": batch_id, "status": current},
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


def abandoned(store: Store, older_than: int) -> list[str]:
    """Batches left `validating` this long: their edge died while storing them."""
    found = store.batches.find(
        {"status": BatchStatus.VALIDATING, "created_at": {"$lt": older_than}}, {"_id": 1}
    )
    return [doc["_id"] for doc in found]


def unfinished(store: Store, limit: int) -> list[str]:
    found = store.batches.find(
        {"status": {"$in": [BatchStatus.IN_PROGRESS, BatchStatus.CANCELLING]}},
        {"_id": 1},
        limit=limit,
    )
    return [doc["_id"] for doc in found]


def owing_event(store: Store, batch_id: str) -> Doc | None:
    return store.batches.find_one({"_id": batch_id, "events_pending": {"$type": "string"}})


def event_flushed(store: Store, batch_id: str) -> None:
    store.batches.update_one({"_id": batch_id}, {"$unset": {"events_pending": ""}})


def stale_outbox(store: Store, limit: int) -> list[str]:
    found = store.batches.find({"events_pending": {"$type": "string"}}, {"_id": 1}, limit=limit)
    return [doc["_id"] for doc in found]
