"""Batches: many requests stored as chunk units, counted from the units themselves.

No multi-document transactions: a batch is stored as `validating` (invisible,
not sent) until every chunk is in, and the reconciler removes one a crash
left half-stored. Counters are recomputed from the chunks and only ever
raised (`$max`), so a redelivered chunk cannot count twice.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any

from pymongo import ASCENDING, ReturnDocument

from worker import jobs, tasks, webhooks
from worker.ids import new_ids
from worker.retention import expire_at
from worker.runtime import Runtime
from worker.store import Doc, Store

log = logging.getLogger(__name__)


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
        # Client-chosen keys may not be valid BSON keys: kept as JSON text.
        "metadata_json": json.dumps(metadata, ensure_ascii=False),
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
        "request_counts": request_counts(doc),
        "callback_url": doc.get("callback_url"),
        "metadata": json.loads(doc.get("metadata_json") or "{}"),
    }


class Stager:
    """Stores a batch chunk by chunk as its requests stream in.

    Chunks are inserted `staged`, invisible and unsent; `commit` makes the
    whole batch visible and sends it, `abort` removes it.
    """

    def __init__(self, rt: Runtime, batch: Doc) -> None:
        self.rt = rt
        self.batch = batch
        self.seq = 0
        self.items: list[Doc] = []
        self.size = 0
        rt.store.batches.insert_one(batch)

    def add(self, custom_id: str, body_text: str) -> None:
        self.items.append({"id": None, "custom_id": custom_id, "body": body_text})
        self.size += len(body_text)
        settings = self.rt.settings
        if len(self.items) >= settings.chunk_size or self.size >= settings.chunk_max_bytes:
            self._flush()

    def _flush(self) -> None:
        if not self.items:
            return
        for item, job_id in zip(self.items, new_ids("job_", len(self.items)), strict=True):
            item["id"] = job_id
        unit = jobs.new_unit(
            unit_id=f"{self.batch['_id']}.{self.seq:06d}",
            tenant=self.batch["tenant"],
            items=self.items,
            now=self.batch["created_at"],
            callback_url=self.batch.get("callback_url"),
            request_id=self.batch.get("request_id"),
            batch_id=self.batch["_id"],
            seq=self.seq,
            job_events=self.batch["job_events"],
        )
        # Invisible and unsent until the whole batch is in: not due for resending.
        unit["status"] = "staged"
        del unit["due_at"]
        self.rt.store.jobs.insert_one(unit)
        self.seq += 1
        self.items, self.size = [], 0

    def commit(self, total: int) -> Doc:
        """Make the batch visible and send its chunks; returns the batch."""
        self._flush()
        batch_id = self.batch["_id"]
        now = int(time.time())
        self.rt.store.jobs.update_many(
            {"batch_id": batch_id, "status": "staged"},
            {"$set": {"status": "queued", "due_at": now + self.rt.settings.resend_after_seconds}},
        )
        # The edge answers 202 after this write: journaled, it holds the chunks too.
        doc = self.rt.store.journaled("batches").find_one_and_update(
            {"_id": batch_id, "status": "validating"},
            {
                "$set": {
                    "status": "in_progress",
                    "in_progress_at": now,
                    "request_counts.total": total,
                    "chunks": self.seq,
                    "tally": {},
                }
            },
            return_document=ReturnDocument.AFTER,
        )
        assert doc is not None
        try:
            for seq in range(self.seq):
                tasks.send_chunk(f"{batch_id}.{seq:06d}")
        except Exception:  # stored: the reconciler sends what did not go
            log.warning("batch %s stored but not all sent; the reconciler will", batch_id)
        return doc

    def abort(self) -> None:
        self.rt.store.jobs.delete_many({"batch_id": self.batch["_id"]})
        self.rt.store.batches.delete_one({"_id": self.batch["_id"]})


def get(store: Store, tenant: str, batch_id: str) -> Doc | None:
    return store.batches.find_one(
        {"_id": batch_id, "tenant": tenant, "status": {"$ne": "validating"}}
    )


def unit_facts(unit: Doc) -> list[int]:
    """What a finished or cancelled chunk adds to its batch: completed, failed, cancelled."""
    codes = unit["codes"]
    completed = sum(1 for code in codes if code == 200)
    failed = sum(1 for code in codes if code is not None and code != 200)
    cancelled = len(codes) - completed - failed if unit["status"] == "cancelled" else 0
    return [completed, failed, cancelled]


def request_counts(doc: Doc) -> dict[str, int]:
    completed = failed = cancelled = 0
    for fact in (doc.get("tally") or {}).values():
        completed, failed, cancelled = completed + fact[0], failed + fact[1], cancelled + fact[2]
    total = doc["request_counts"]["total"]
    return {"total": total, "completed": completed, "failed": failed, "cancelled": cancelled}


def refresh(rt: Runtime, batch_id: str, facts: dict[int, list[int]]) -> None:
    """Record what chunks of a batch finished with, and finish the batch after its last.

    Each chunk's facts go under its own key, so recording them again (a
    redelivered chunk, a reconciler pass) changes nothing: no bare `$inc`.
    """
    projection = {"tally": 1, "chunks": 1, "status": 1}
    if facts:
        doc = rt.store.batches.find_one_and_update(
            {"_id": batch_id},
            {"$set": {f"tally.{seq}": fact for seq, fact in facts.items()}},
            projection=projection,
            return_document=ReturnDocument.AFTER,
        )
    else:
        doc = rt.store.batches.find_one({"_id": batch_id}, projection)
    if doc is None or len(doc.get("tally") or {}) < doc.get("chunks", 0):
        return
    now = int(time.time())
    for current, final, stamp, event in (
        ("in_progress", "completed", "completed_at", "batch.completed"),
        ("cancelling", "cancelled", "cancelled_at", "batch.cancelled"),
    ):
        done = rt.store.batches.find_one_and_update(
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
            projection={"_id": 1},
        )
        if done is not None:
            webhooks.flush_batch_event(rt, batch_id)
            return


def settle(rt: Runtime, batch_id: str) -> None:
    """Tally chunks that finished without being counted (a crash in between)."""
    doc = rt.store.batches.find_one({"_id": batch_id}, {"tally": 1})
    if doc is None:
        return
    known = [int(seq) for seq in doc.get("tally") or {}]
    missing = rt.store.jobs.find(
        {"batch_id": batch_id, "status": {"$in": ["done", "cancelled"]}, "seq": {"$nin": known}},
        {"codes": 1, "status": 1, "seq": 1},
    )
    refresh(rt, batch_id, {unit["seq"]: unit_facts(unit) for unit in missing})


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
                },
                "$unset": {"due_at": ""},
            },
        )
        settle(rt, batch_id)
        doc = get(rt.store, tenant, batch_id)
    return doc


def iter_results(store: Store, batch_id: str, status: str | None) -> Iterator[Doc]:
    """Finished requests in input order, one chunk in memory at a time."""
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
                "body": jobs.result_body(unit, index),
            }


def list_page(
    store: Store, tenant: str, *, limit: int, after: str | None
) -> tuple[list[Doc], bool] | None:
    """Newest first, as OpenAI lists batches; None when `after` is unknown."""
    query: Doc = {"tenant": tenant, "status": {"$ne": "validating"}}
    if after is not None:
        anchor = get(store, tenant, after)
        if anchor is None:
            return None
        query["$or"] = [
            {"created_at": {"$lt": anchor["created_at"]}},
            {"created_at": anchor["created_at"], "_id": {"$lt": after}},
        ]
    docs = list(store.batches.find(query, sort=[("created_at", -1), ("_id", -1)], limit=limit + 1))
    return docs[:limit], len(docs) > limit
