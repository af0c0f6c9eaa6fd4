"""Jobs, stored as work units.

A unit is one MongoDB document holding one request (a single create) or a
chunk of a batch's requests, with their results in parallel arrays. One
document per chunk instead of per request is what lets a batch cost little
more than the assistants it inserts; the API still shows one job per request.

Unit states: queued -> in_progress -> done, or queued -> cancelled. A job's
own status is derived from its unit's state and its result code.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from pymongo import ASCENDING

from worker import assistants
from worker.store import Doc, Store

JOB_STATUSES = ("queued", "in_progress", "succeeded", "failed", "cancelled")


# Every index is paid for on each of a unit's writes, so there are few, and
# those that only batches need leave single creates out (they carry no batch_id).
IN_A_BATCH = {"batch_id": {"$exists": True}}


def ensure_indexes(store: Store) -> None:
    # A single create's job id is its unit's _id; a batch job is found by item.
    store.jobs.create_index([("items.id", ASCENDING)], partialFilterExpression=IN_A_BATCH)
    store.jobs.create_index(
        [("batch_id", ASCENDING), ("seq", ASCENDING)], partialFilterExpression=IN_A_BATCH
    )
    store.jobs.create_index([("tenant", ASCENDING), ("created_at", ASCENDING), ("_id", ASCENDING)])
    # The reconciler's one sweep: only open units carry `due_at` (when a queued
    # unit is sent again, or when an in_progress unit's lease runs out).
    store.jobs.create_index([("due_at", ASCENDING)], sparse=True)
    store.jobs.create_index([("events_pending", ASCENDING)], sparse=True)
    store.jobs.create_index("expire_at", expireAfterSeconds=0)


def new_unit(
    *,
    unit_id: str,
    tenant: str,
    items: list[Doc],
    now: int,
    callback_url: str | None = None,
    request_id: str | None = None,
    batch_id: str | None = None,
    seq: int = 0,
    job_events: bool = True,
    resend_after: int = 30,
) -> Doc:
    """A unit ready to insert; items are `{"id", "custom_id", "body"}`."""
    unit: Doc = {
        "_id": unit_id,
        "tenant": tenant,
        "seq": seq,
        "status": "queued",
        "created_at": now,
        "started_at": None,
        "completed_at": None,
        "due_at": now + resend_after,
        "attempts": 0,
        "callback_url": callback_url,
        "request_id": request_id,
        "job_events": job_events,
        "items": items,
        "codes": [None] * len(items),
        "results": [None] * len(items),
    }
    if batch_id is not None:
        unit["batch_id"] = batch_id
    return unit


def item_status(unit: Doc, index: int) -> str:
    code = unit["codes"][index]
    if code == 200:
        return "succeeded"
    if code is not None:
        return "failed"
    if unit["status"] == "cancelled":
        return "cancelled"
    if unit["status"] == "done":  # finished without a result: cannot happen, say so
        return "failed"
    return str(unit["status"])


def job_public(unit: Doc, index: int) -> Doc:
    """The job object of API.md for request `index` of a unit."""
    item = unit["items"][index]
    code = unit["codes"][index]
    status = item_status(unit, index)
    result = None
    if code is not None:
        result = {"status_code": code, "body": result_body(unit, index)}
    finished = status in ("succeeded", "failed", "cancelled")
    return {
        "id": item["id"],
        "object": "assistant.job",
        "status": status,
        "created_at": unit["created_at"],
        "started_at": unit.get("started_at"),
        "completed_at": unit.get("completed_at") if finished else None,
        "attempts": unit.get("attempts", 0),
        "batch_id": unit.get("batch_id"),
        "custom_id": item.get("custom_id"),
        "callback_url": unit.get("callback_url"),
        "result": result,
    }


def result_body(unit: Doc, index: int) -> Any:
    """The body of a finished request's result: the assistant object or the error."""
    stored = json.loads(unit["results"][index])
    if unit["codes"][index] == 200:
        return assistants.public_from_request(json.loads(unit["items"][index]["body"]), stored)
    return stored


def is_finished(job: Doc) -> bool:
    return job["status"] in ("succeeded", "failed", "cancelled")


def insert_unit(store: Store, unit: Doc) -> None:
    # The edge answers 202 after this write: it must survive a crash of the store.
    store.journaled("jobs").insert_one(unit)


def find_unit(
    store: Store, tenant: str, job_id: str, projection: dict[str, Any] | None = None
) -> Doc | None:
    """The unit holding a job: a single create's job id is its unit's _id."""
    unit = store.jobs.find_one({"_id": job_id, "tenant": tenant}, projection)
    if unit is None:
        unit = store.jobs.find_one({"items.id": job_id, "tenant": tenant, **IN_A_BATCH}, projection)
    return unit


def get_job(store: Store, tenant: str, job_id: str) -> Doc | None:
    # A single create's unit id is its job id: one indexed read of a small doc.
    unit = store.jobs.find_one({"_id": job_id, "tenant": tenant})
    if unit is None:
        unit = store.jobs.find_one({"items.id": job_id, "tenant": tenant, **IN_A_BATCH})
    if unit is None:
        return None
    for index, item in enumerate(unit["items"]):
        if item["id"] == job_id:
            return job_public(unit, index)
    return None


def iter_jobs(store: Store, query: Doc, sort: list[tuple[str, int]]) -> Iterator[Doc]:
    """Every job of the units matching `query`, in unit then item order."""
    for unit in store.jobs.find(query, sort=sort, batch_size=8):
        for index in range(len(unit["items"])):
            yield job_public(unit, index)


def list_jobs(
    store: Store,
    tenant: str,
    *,
    batch_id: str | None,
    status: str | None,
    limit: int,
    after: str | None,
) -> tuple[list[Doc], bool] | None:
    """A page of jobs and whether more follow; None when `after` is unknown."""
    query: Doc = {"tenant": tenant}
    if batch_id is not None:
        query["batch_id"] = batch_id
        sort = [("seq", ASCENDING)]
    else:
        sort = [("created_at", ASCENDING), ("_id", ASCENDING)]
    if after is not None:
        anchor = find_unit(store, tenant, after, {"created_at": 1, "seq": 1, "batch_id": 1})
        if anchor is None or (batch_id is not None and anchor.get("batch_id") != batch_id):
            return None
        if batch_id is not None:
            query["seq"] = {"$gte": anchor["seq"]}
        else:
            query["$or"] = [
                {"created_at": {"$gt": anchor["created_at"]}},
                {"created_at": anchor["created_at"], "_id": {"$gte": anchor["_id"]}},
            ]
    page: list[Doc] = []
    skipping = after is not None
    for job in iter_jobs(store, query, sort):
        if skipping:
            skipping = job["id"] != after
            continue
        if status is not None and job["status"] != status:
            continue
        if len(page) == limit:
            return page, True
        page.append(job)
    return page, False
