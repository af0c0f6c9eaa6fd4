"""The `jobs` collection: work units, their leases and their results.

Unit states: staged -> queued -> in_progress -> done, or queued -> cancelled;
every change is a compare-and-set, and every write of an attempt is fenced by
the lease token it claimed the unit with.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any, cast

from pymongo import ASCENDING, UpdateOne

from worker.domain.documents import Doc, Unit
from worker.domain.statuses import CLOSED_UNIT, JobStatus, UnitStatus
from worker.domain.units import job_public, job_statuses
from worker.store import pages
from worker.store.connection import Store

# Every index is paid for on each of a unit's writes, so there are few, and
# those that only batches need leave single creates out (they carry no batch_id).
IN_A_BATCH = {"batch_id": {"$exists": True}}
SINGLE = {"batch_id": {"$exists": False}}


def ensure_indexes(store: Store) -> None:
    # A single create's job id is its unit's _id; a batch job is found by item.
    store.jobs.create_index([("items.id", ASCENDING)], partialFilterExpression=IN_A_BATCH)
    store.jobs.create_index(
        [("batch_id", ASCENDING), ("seq", ASCENDING)], partialFilterExpression=IN_A_BATCH
    )
    store.jobs.create_index([("tenant", ASCENDING), ("created_at", ASCENDING), ("_id", ASCENDING)])
    # Lists filtered by status: a range of units holding jobs of that status,
    # in list order. Multikey, but a unit holds at most two statuses (a
    # finished chunk's succeeded and failed jobs).
    store.jobs.create_index(
        [
            ("tenant", ASCENDING),
            ("job_statuses", ASCENDING),
            ("created_at", ASCENDING),
            ("_id", ASCENDING),
        ]
    )
    store.jobs.create_index(
        [("batch_id", ASCENDING), ("job_statuses", ASCENDING), ("seq", ASCENDING)],
        partialFilterExpression=IN_A_BATCH,
    )
    # The reconciler's one sweep: only open units carry `due_at` (when a queued
    # unit is sent again, or when an in_progress unit's lease runs out).
    store.jobs.create_index([("due_at", ASCENDING)], sparse=True)
    store.jobs.create_index([("events_pending", ASCENDING)], sparse=True)
    store.jobs.create_index("expire_at", expireAfterSeconds=0)


def insert_unit(store: Store, unit: Unit) -> None:
    # The edge answers 202 after this write: it must survive a crash of the store.
    store.journaled("jobs").insert_one(cast(Doc, unit))


def find_unit(
    store: Store, tenant: str, job_id: str, projection: dict[str, Any] | None = None
) -> Unit | None:
    """The unit holding a job: a single create's job id is its unit's _id, and a
    batch job is an item of a chunk (whose own id is no job id)."""
    unit = store.jobs.find_one({"_id": job_id, "tenant": tenant, **SINGLE}, projection)
    if unit is None:
        unit = store.jobs.find_one({"items.id": job_id, "tenant": tenant, **IN_A_BATCH}, projection)
    return cast(Unit | None, unit)


def get_job(store: Store, tenant: str, job_id: str) -> Doc | None:
    unit = find_unit(store, tenant, job_id)
    if unit is None:
        return None
    for index, item in enumerate(unit["items"]):
        if item["id"] == job_id:
            return job_public(unit, index)
    return None


def list_jobs(
    store: Store,
    tenant: str,
    *,
    batch_id: str | None,
    status: str | None,
    limit: int,
    after: str | None,
) -> tuple[list[Doc], bool] | None:
    """A page of jobs and whether more follow; None when `after` is unknown.

    With a status, only units holding jobs of that status are read, through
    an index on `job_statuses`: a page costs the units it shows.
    """
    query: Doc = {"tenant": tenant}
    if batch_id is not None:
        query["batch_id"] = batch_id
        sort = [("seq", ASCENDING)]
    else:
        sort = [(key, ASCENDING) for key in pages.ORDER]
    if status is not None:
        query["job_statuses"] = status
    else:
        # A chunk stored while its batch still streams in is not shown yet.
        query["status"] = {"$ne": UnitStatus.STAGED}
    anchor = None
    if after is not None:
        anchor = find_unit(store, tenant, after, {"created_at": 1, "seq": 1, "batch_id": 1})
        if anchor is None or (batch_id is not None and anchor.get("batch_id") != batch_id):
            return None
        if batch_id is not None:
            query["seq"] = {"$gte": anchor["seq"]}
        else:
            query.update(pages.beyond(cast(Doc, anchor), ascending=True, inclusive=True))
    page: list[Doc] = []
    for unit in store.jobs.find(query, sort=sort, batch_size=8):
        start = 0
        if anchor is not None and unit["_id"] == anchor["_id"]:
            # The cursor's own unit: only the jobs after it.
            start = 1 + next(i for i, item in enumerate(unit["items"]) if item["id"] == after)
        for index in range(start, len(unit["items"])):
            job = job_public(cast(Unit, unit), index)
            if status is not None and job["status"] != status:
                continue
            if len(page) == limit:
                return page, True
            page.append(job)
    return page, False


def claim(store: Store, unit_ids: list[str], lease_seconds: int) -> list[Unit]:
    """Take the queued units under a fresh lease token; only that lease may finish them."""
    token = secrets.token_hex(16)
    now = time.time()
    store.jobs.update_many(
        {"_id": {"$in": unit_ids}, "status": UnitStatus.QUEUED},
        [
            {
                "$set": {
                    "status": UnitStatus.IN_PROGRESS,
                    "job_statuses": {"$literal": [JobStatus.IN_PROGRESS]},
                    "lease": token,
                    # Past this, the reconciler takes the unit back.
                    "due_at": now + lease_seconds,
                    "attempts": {"$add": ["$attempts", 1]},
                    # The first attempt's start is the job's start.
                    "started_at": {"$ifNull": ["$started_at", int(now)]},
                }
            }
        ],
    )
    found = store.jobs.find({"_id": {"$in": unit_ids}, "lease": token}, {"results": 0})
    return [cast(Unit, unit) for unit in found]


def record(
    store: Store,
    units: list[Unit],
    outcomes: dict[str, list[tuple[int, Any]]],
    *,
    now: int,
    expire_at: datetime,
    owing: set[str],
) -> set[str]:
    """Write results, fenced by the lease; returns the ids of units this call finished.

    A 200 result is stored as a reference to its assistant (the rest of the
    object is the request itself), which keeps a chunk's results small.
    """
    ops = []
    for unit in units:
        results = outcomes[unit["_id"]]
        codes = [code for code, _ in results]
        update: Doc = {
            "status": UnitStatus.DONE,
            "codes": codes,
            "job_statuses": job_statuses(UnitStatus.DONE, codes),
            "results": [json.dumps(body, ensure_ascii=False) for _, body in results],
            "completed_at": now,
            "expire_at": expire_at,
            "done_by": unit["lease"],
        }
        if unit["_id"] in owing:
            # The outbox: the events are owed in the same write as the result.
            update["events_pending"] = True
        ops.append(
            UpdateOne(
                {"_id": unit["_id"], "lease": unit["lease"], "status": UnitStatus.IN_PROGRESS},
                {"$set": update, "$unset": {"lease": "", "due_at": ""}},
            )
        )
    store.jobs.bulk_write(ops, ordered=False)
    # Which writes matched is not reported per operation; read back which
    # units this lease finished (a reclaimed unit's stale write matched nothing).
    ids = [unit["_id"] for unit in units]
    done = store.jobs.find({"_id": {"$in": ids}, "done_by": units[0]["lease"]}, {"_id": 1})
    return {doc["_id"] for doc in done}


# Batches' chunks.


def insert_staged(store: Store, unit: Unit) -> None:
    """A chunk stored while its batch streams in: invisible, unsent, not due."""
    staged: Doc = dict(unit, status=UnitStatus.STAGED, job_statuses=[])
    staged.pop("due_at", None)
    store.jobs.insert_one(staged)


def queue_staged(store: Store, batch_id: str, due_at: int) -> None:
    store.jobs.update_many(
        {"batch_id": batch_id, "status": UnitStatus.STAGED},
        {
            "$set": {
                "status": UnitStatus.QUEUED,
                "job_statuses": [JobStatus.QUEUED],
                "due_at": due_at,
            }
        },
    )


def delete_batch_units(store: Store, batch_id: str) -> None:
    store.jobs.delete_many({"batch_id": batch_id})


def cancel_queued(store: Store, batch_id: str, now: int, expire_at: datetime) -> None:
    store.jobs.update_many(
        {"batch_id": batch_id, "status": UnitStatus.QUEUED},
        {
            "$set": {
                "status": UnitStatus.CANCELLED,
                "job_statuses": [JobStatus.CANCELLED],
                "completed_at": now,
                "expire_at": expire_at,
            },
            "$unset": {"due_at": ""},
        },
    )


def closed_chunks(store: Store, batch_id: str, except_seqs: list[int]) -> list[Doc]:
    """The batch's finished or cancelled chunks, but for those already tallied."""
    return list(
        store.jobs.find(
            {
                "batch_id": batch_id,
                "status": {"$in": list(CLOSED_UNIT)},
                "seq": {"$nin": except_seqs},
            },
            {"codes": 1, "status": 1, "seq": 1},
        )
    )


def iter_chunks(store: Store, batch_id: str) -> Iterator[Unit]:
    """A batch's chunks in input order, a couple in memory at a time."""
    for unit in store.jobs.find({"batch_id": batch_id}, sort=[("seq", ASCENDING)], batch_size=2):
        yield cast(Unit, unit)


# The reconciler's sweep.


def due(store: Store, now: int, limit: int) -> list[Doc]:
    """Open units past their `due_at`: queued ones to send again, leases run out."""
    return list(
        store.jobs.find(
            {"due_at": {"$lt": now}},
            {"status": 1, "lease": 1, "due_at": 1, "batch_id": 1},
            limit=limit,
        )
    )


def claim_resend(store: Store, unit_id: str, now: int, next_due: int) -> bool:
    """Take the resend of a queued unit, so two reconcilers do not both send it."""
    claimed = store.jobs.update_one(
        {"_id": unit_id, "status": UnitStatus.QUEUED, "due_at": {"$lt": now}},
        {"$set": {"due_at": next_due}},
    )
    return claimed.modified_count == 1


def reclaim(store: Store, unit: Doc, now: int) -> bool:
    """Take back a unit whose lease ran out; a worker that finishes first wins."""
    result = store.jobs.update_one(
        {"_id": unit["_id"], "lease": unit["lease"], "status": UnitStatus.IN_PROGRESS},
        {
            "$set": {
                "status": UnitStatus.QUEUED,
                "job_statuses": [JobStatus.QUEUED],
                "due_at": now - 1,
            },
            "$unset": {"lease": ""},
        },
    )
    return result.modified_count == 1


# The outbox of job events.


def owing_events(store: Store, unit_ids: list[str]) -> list[Unit]:
    found = store.jobs.find({"_id": {"$in": unit_ids}, "events_pending": True})
    return [cast(Unit, unit) for unit in found]


def events_flushed(store: Store, unit_ids: list[str]) -> None:
    store.jobs.update_many({"_id": {"$in": unit_ids}}, {"$unset": {"events_pending": ""}})


def stale_outbox(store: Store, older_than: float, limit: int) -> list[str]:
    """Units whose owed events were never flushed (a crash in between)."""
    found = store.jobs.find(
        {"events_pending": True, "completed_at": {"$lt": older_than}}, {"_id": 1}, limit=limit
    )
    return [doc["_id"] for doc in found]
