"""The `jobs` collection: work units, their leases and their results.

Unit states: staged -> queued -> in_progress -> done, or queued -> cancelled;
every change is a compare-and-set, and every write of an attempt is fenced by
the lease token it claimed the unit with.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any, cast

from pymongo import ASCENDING, DESCENDING, ReturnDocument, UpdateOne

from worker.domain.documents import Doc, Unit
from worker.domain.statuses import CLOSED_UNIT, JobStatus, UnitStatus
from worker.domain.units import job_public, job_statuses, results_fields
from worker.store import pages
from worker.store.connection import Store, insert_new

# Every index is paid for on each of a unit's writes, so there are few, and
# those that only batches need leave single creates out (they carry no batch_id).
IN_A_BATCH = {"batch_id": {"$exists": True}}


def ensure_indexes(store: Store) -> None:
    # Any job is found by its item: a lone single create's job id is also its
    # unit's _id, but single creates accepted together share a unit, and a
    # chunk's id is no job id. The index once covered chunks alone.
    job_ids = store.jobs.index_information().get("items.id_1")
    if job_ids is not None and "partialFilterExpression" in job_ids:
        store.jobs.drop_index("items.id_1")
    store.jobs.create_index([("items.id", ASCENDING)])
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
    # Only units that modify or delete assistants carry `targets`: creates pay nothing.
    store.jobs.create_index([("targets", ASCENDING)], sparse=True)


def insert_unit(store: Store, unit: Unit) -> None:
    # The edge answers 202 after this write: it must survive a crash of the store.
    store.journaled("jobs").insert_one(cast(Doc, unit))


def insert_units(store: Store, new: list[Unit]) -> set[int]:
    """Insert units in one journaled write (202s follow it); returns the indexes of
    those already stored."""
    return insert_new(store.journaled("jobs"), [cast(Doc, unit) for unit in new])


def find_unit(
    store: Store, tenant: str, job_id: str, projection: dict[str, Any] | None = None
) -> Unit | None:
    """The tenant's unit holding a job, whichever kind of unit holds it."""
    unit = store.jobs.find_one({"items.id": job_id, "tenant": tenant}, projection)
    return None if unit is None else cast(Unit, unit)


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
    before: str | None = None,
    order: str = "asc",
) -> tuple[list[Doc], bool] | str:
    """A page of jobs in the list's order (oldest first by default; a batch's in
    input order) and whether more follow in the direction read; the name of
    the cursor (`after` or `before`) that names no job of the list instead.

    With a status, only units holding jobs of that status are read, through
    an index on `job_statuses`: a page costs the units it shows. `before`
    alone reads back towards the start, then restores the order.
    """
    ascending = order == "asc"
    query: Doc = {"tenant": tenant}
    if batch_id is not None:
        query["batch_id"] = batch_id
    if status is not None:
        query["job_statuses"] = status
    else:
        # A chunk stored while its batch still streams in is not shown yet.
        query["status"] = {"$ne": UnitStatus.STAGED}
    anchors: dict[str, Unit] = {}
    for name, cursor_id in (("after", after), ("before", before)):
        if cursor_id is None:
            continue
        anchor = find_unit(store, tenant, cursor_id, {"created_at": 1, "seq": 1, "batch_id": 1})
        if anchor is None or (batch_id is not None and anchor.get("batch_id") != batch_id):
            return name
        anchors[name] = anchor
    backwards = before is not None and after is None
    forward = ascending != backwards  # the direction units are read in
    # Where reading starts (its unit included) and where it stops.
    start, stop = (before or "", "") if backwards else (after or "", before or "")
    start_unit = anchors.get("before" if backwards else "after")
    stop_unit = None if backwards else anchors.get("before")
    bounds = []
    for anchor, ahead in ((start_unit, forward), (stop_unit, not forward)):
        if anchor is None:
            continue
        if batch_id is not None:
            bounds.append({"seq": {"$gte" if ahead else "$lte": anchor["seq"]}})
        else:
            bounds.append(pages.beyond(cast(Doc, anchor), ascending=ahead, inclusive=True))
    if bounds:
        query["$and"] = bounds
    direction = ASCENDING if forward else DESCENDING
    keys = ("seq",) if batch_id is not None else pages.ORDER
    page: list[Doc] = []
    for unit in store.jobs.find(query, sort=[(key, direction) for key in keys], batch_size=8):
        ids = [item["id"] for item in unit["items"]]
        indexes = list(range(len(ids)) if forward else reversed(range(len(ids))))
        if start_unit is not None and unit["_id"] == start_unit["_id"]:
            # The cursor's own unit: only the jobs beyond it.
            indexes = indexes[indexes.index(ids.index(start)) + 1 :]
        if stop_unit is not None and unit["_id"] == stop_unit["_id"]:
            indexes = indexes[: indexes.index(ids.index(stop))]
        for index in indexes:
            job = job_public(cast(Unit, unit), index)
            if status is not None and job["status"] != status:
                continue
            if len(page) == limit:
                return (page[::-1] if backwards else page), True
            page.append(job)
    return (page[::-1] if backwards else page), False


def take(store: Store, unit_ids: list[str], lease_seconds: int) -> list[Unit]:
    """The queued units among `unit_ids`, to process under one token.

    A unit of pure single creates on its first run is taken as read, without
    a claim: its effects are idempotent by construction (each assistant's
    `_id` comes from its job, events are keyed by the job), so a second run of
    it writes the same documents and loses `record`'s conditional write
    `queued -> done`. One read, then the results' one write. Every other unit
    is claimed under the lease (`claim`): changes, whose order matters, and
    units the reconciler sent again or took back, so that a unit which keeps
    killing its worker has its attempts counted and fails after the limit."""
    token = secrets.token_hex(16)
    found = [
        cast(Unit, unit)
        for unit in store.jobs.find(
            {"_id": {"$in": unit_ids}, "status": UnitStatus.QUEUED}, {"results": 0}
        )
    ]
    taken = [unit for unit in found if _creates_first_run(unit)]
    now = int(time.time())
    for unit in taken:
        # What a claim would have set, written with the results (`record`).
        unit["lease"], unit["unclaimed"] = token, True
        unit["attempts"] += 1
        unit["started_at"] = unit["started_at"] or now
    rest = [unit["_id"] for unit in found if not unit.get("unclaimed")]
    return taken + (claim(store, rest, lease_seconds, token) if rest else [])


def _creates_first_run(unit: Unit) -> bool:
    return (
        "batch_id" not in unit
        and unit["attempts"] == 0
        and not unit.get("resent")
        and all(item.get("op") is None for item in unit["items"])
    )


def claim(
    store: Store, unit_ids: list[str], lease_seconds: int, token: str | None = None
) -> list[Unit]:
    """Take the queued units under a fresh lease token; only that lease may finish them."""
    token = token or secrets.token_hex(16)
    now = time.time()
    claim = [
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
    ]
    # An update of many units, then a read of what this lease took (MongoDB
    # has no command that does both for many); by `_id` alone, the lease
    # checked here.
    store.jobs.update_many({"_id": {"$in": unit_ids}, "status": UnitStatus.QUEUED}, claim)
    found = store.jobs.find({"_id": {"$in": unit_ids}}, {"results": 0})
    return [cast(Unit, unit) for unit in found if unit.get("lease") == token]


def record(
    store: Store,
    units: list[Unit],
    outcomes: dict[str, list[tuple[int, Any]]],
    *,
    now: int,
    expire_at: datetime,
    owing: set[str],
    actions: dict[str, list[str | None]] | None = None,
) -> set[str]:
    """Write results, fenced by the lease; returns the ids of units this call finished."""
    ops = []
    for unit in units:
        update: Doc = {
            **results_fields(outcomes[unit["_id"]], now, (actions or {}).get(unit["_id"])),
            "expire_at": expire_at,
            "done_by": unit["lease"],
        }
        if unit["_id"] in owing:
            # The outbox: the events are owed in the same write as the result.
            update["events_pending"] = True
        fence: Doc = {"lease": unit["lease"], "status": UnitStatus.IN_PROGRESS}
        if unit.get("unclaimed"):
            # Taken as read (`take`): the first run to finish it writes its results.
            fence = {"status": UnitStatus.QUEUED}
            update.update(attempts=unit["attempts"], started_at=unit["started_at"])
        ops.append(
            UpdateOne(
                {"_id": unit["_id"], **fence},
                {"$set": update, "$unset": {"lease": "", "due_at": ""}},
            )
        )
    written = store.jobs.bulk_write(ops, ordered=False)
    ids = [unit["_id"] for unit in units]
    if written.matched_count == len(units):
        return set(ids)
    # Which writes matched is not reported per operation; read back which
    # units this lease finished (a reclaimed unit's stale write matched nothing).
    done = store.jobs.find({"_id": {"$in": ids}, "done_by": units[0]["lease"]}, {"_id": 1})
    return {doc["_id"] for doc in done}


# Changes of assistants (modify, delete): one assistant's apply in acceptance order.

OPEN = [UnitStatus.QUEUED, UnitStatus.IN_PROGRESS]


def _changing(store: Store, targets: list[str], projection: Doc) -> Iterator[Doc]:
    """Units that change any of `targets`, finished ones too.

    The query names `targets` alone and the rest is filtered here, a shape
    for SecantusDB (`worker.store.secantus` says why and what it costs):
    with other terms it scans every unit, comparing each target list with the
    long `$in` (an apply chunk names up to 500 assistants).
    """
    yield from store.jobs.find(
        {"targets": {"$in": targets}}, {**projection, "status": 1}, batch_size=1000
    )


def open_changes(store: Store, targets: list[str], exclude: list[str]) -> list[Doc]:
    """Accepted units, not finished, that change any of `targets`, but for `exclude`."""
    excluded = set(exclude)
    return [
        doc
        for doc in _changing(store, targets, {"targets": 1, "accepted_at": 1, "created_at": 1})
        if doc["status"] in OPEN and doc["_id"] not in excluded
    ]


def changes_open(store: Store, tenant: str, target: str) -> bool:
    """Whether the tenant has an accepted, unfinished change of `target`."""
    found = store.jobs.find_one(
        {"targets": target, "tenant": tenant, "status": {"$in": list(OPEN)}}, {"_id": 1}
    )
    return found is not None


def open_changes_of(store: Store, tenant: str) -> tuple[set[str], bool]:
    """What the tenant's accepted, unfinished units change: the assistants they
    target, and whether one of them is a prune (which may delete any keyed one)."""
    found = store.jobs.find(
        {"tenant": tenant, "job_statuses": {"$in": [JobStatus.QUEUED, JobStatus.IN_PROGRESS]}},
        {"targets": 1, "prune": 1},
        batch_size=1000,
    )
    targets: set[str] = set()
    pruning = False
    for doc in found:
        targets.update(doc.get("targets") or ())
        pruning = pruning or bool(doc.get("prune"))
    return targets, pruning


def queued_changes(store: Store, targets: list[str]) -> list[Doc]:
    """Queued units that change any of `targets` and were held back (`release`)
    for an earlier change: those that wait to be sent again. The others still
    have their first message queued (or, lost, the reconciler sends it)."""
    return [
        doc
        for doc in _changing(store, targets, {"batch_id": 1, "held": 1})
        if doc["status"] == UnitStatus.QUEUED and doc.get("held")
    ]


def release(store: Store, unit: Unit, due_at: int) -> bool:
    """Give back a claimed unit that must wait: queued again, its claim not counted."""
    result = store.jobs.update_one(
        {"_id": unit["_id"], "lease": unit["lease"], "status": UnitStatus.IN_PROGRESS},
        [
            {
                "$set": {
                    "status": UnitStatus.QUEUED,
                    "job_statuses": {"$literal": [JobStatus.QUEUED]},
                    "due_at": due_at,
                    "held": True,
                    "attempts": {"$subtract": ["$attempts", 1]},
                    "started_at": {"$cond": [{"$lte": ["$attempts", 1]}, None, "$started_at"]},
                }
            },
            {"$unset": ["lease"]},
        ],
    )
    return result.modified_count == 1


def note_deleting(store: Store, unit: Unit, job_ids: list[str]) -> bool:
    """Record, before deleting, which jobs of the unit delete an existing assistant."""
    result = store.jobs.update_one(
        {"_id": unit["_id"], "lease": unit["lease"], "status": UnitStatus.IN_PROGRESS},
        {"$addToSet": {"deleting": {"$each": job_ids}}},
    )
    return result.matched_count == 1


# Batches' chunks.


def insert_staged(store: Store, unit: Unit) -> None:
    """A chunk stored while its batch streams in: invisible, unsent, not due."""
    staged: Doc = dict(unit, status=UnitStatus.STAGED, job_statuses=[])
    staged.pop("due_at", None)
    store.jobs.insert_one(staged)


def insert_settled(
    store: Store, chunks: Iterable[Unit], *, now: int, expire_at: datetime, owing: bool
) -> None:
    """Store chunks the edge answered whole, done as they are inserted (a few
    at a time: each holds a chunk's bodies); owing their job events if `owing`."""
    done: Doc = {
        "status": UnitStatus.DONE,
        "job_statuses": job_statuses(UnitStatus.DONE, [200]),
        "started_at": now,
        "completed_at": now,
        "expire_at": expire_at,
    }
    if owing:
        done["events_pending"] = True
    group: list[Doc] = []
    for chunk in chunks:
        doc: Doc = {**chunk, **done}
        doc.pop("due_at", None)
        group.append(doc)
        if len(group) == SETTLED_GROUP:
            store.jobs.insert_many(group)
            group = []
    if group:
        store.jobs.insert_many(group)


SETTLED_GROUP = 8


def queue_staged(store: Store, tenant: str, batch_id: str, due_at: int) -> None:
    store.jobs.update_many(
        {"batch_id": batch_id, "tenant": tenant, "status": UnitStatus.STAGED},
        {
            "$set": {
                "status": UnitStatus.QUEUED,
                "job_statuses": [JobStatus.QUEUED],
                "due_at": due_at,
            }
        },
    )


def delete_batch_units(store: Store, tenant: str, batch_id: str) -> None:
    store.jobs.delete_many({"batch_id": batch_id, "tenant": tenant})


def cancel_queued(store: Store, tenant: str, batch_id: str, now: int, expire_at: datetime) -> None:
    store.jobs.update_many(
        {"batch_id": batch_id, "tenant": tenant, "status": UnitStatus.QUEUED},
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


def closed_chunks(store: Store, tenant: str, batch_id: str, except_seqs: list[int]) -> list[Doc]:
    """The batch's finished or cancelled chunks, but for those already tallied."""
    return list(
        store.jobs.find(
            {
                "batch_id": batch_id,
                "tenant": tenant,
                "status": {"$in": list(CLOSED_UNIT)},
                "seq": {"$nin": except_seqs},
            },
            {"codes": 1, "status": 1, "seq": 1, "items.op": 1, "actions": 1, "prune": 1},
        )
    )


def iter_custom_ids(store: Store, batch_id: str) -> Iterator[str]:
    """Every custom_id of a batch's requests (an apply batch's names), chunk by chunk."""
    found = store.jobs.find(
        {"batch_id": batch_id, "prune": {"$ne": True}}, {"items.custom_id": 1}, batch_size=4
    )
    for unit in found:
        for item in unit["items"]:
            yield item["custom_id"]


def plan_prune(store: Store, unit: Unit, items: list[Doc]) -> list[Doc] | None:
    """Write a prune chunk's deletions before any is made, once: a redelivered
    chunk keeps the plan it made first. Returns the plan, or None if the lease
    was lost."""
    written = store.jobs.find_one_and_update(
        {
            "_id": unit["_id"],
            "lease": unit["lease"],
            "status": UnitStatus.IN_PROGRESS,
            "planned": {"$ne": True},
        },
        {
            "$set": {
                "items": items,
                "codes": [None] * len(items),
                "results": [None] * len(items),
                "planned": True,
            }
        },
        projection={"items": 1},
        return_document=ReturnDocument.AFTER,
    )
    if written is None:
        kept = store.jobs.find_one(
            {"_id": unit["_id"], "lease": unit["lease"], "status": UnitStatus.IN_PROGRESS},
            {"items": 1},
        )
        return None if kept is None else list(kept["items"])
    return list(written["items"])


def iter_chunks(store: Store, tenant: str, batch_id: str, page: int = 1) -> Iterator[Unit]:
    """A batch's chunks in input order, read `page` at a time by ranges of
    `(batch_id, seq)`: each page is a query of its own on the index, so the
    store never builds (and holds, while a slow client reads) a whole sorted
    result, and no cursor stays open between pages; a slow reader holds one
    chunk (at most CHUNK_MAX_BYTES of bodies and their results). Each page
    takes one of the store's slots for long reads while it is read."""
    after: int | None = None
    while True:
        query: Doc = {"batch_id": batch_id, "tenant": tenant}
        if after is not None:
            query["seq"] = {"$gt": after}
        with store.stream_slot():
            found = list(store.jobs.find(query, sort=[("seq", ASCENDING)], limit=page))
        for unit in found:
            yield cast(Unit, unit)
        if len(found) < page:
            return
        after = found[-1]["seq"]
        del found


# The reconciler's sweep.


def due(store: Store, now: int, limit: int) -> list[Doc]:
    """Open units past their `due_at`: queued ones to send again, leases run out."""
    return list(
        store.jobs.find(
            {"due_at": {"$lt": now}},
            {
                "status": 1,
                "lease": 1,
                "due_at": 1,
                "batch_id": 1,
                "tenant": 1,
                "accepted_at": 1,
                "created_at": 1,
            },
            limit=limit,
        )
    )


def postpone(store: Store, unit_ids: list[str], next_due: int) -> None:
    """Queued units known to be on their way: due again at `next_due`."""
    if unit_ids:
        store.jobs.update_many(
            {"_id": {"$in": unit_ids}, "status": UnitStatus.QUEUED},
            {"$set": {"due_at": next_due}},
        )


def claim_resend(store: Store, unit_id: str, now: int, next_due: int) -> bool:
    """Take the resend of a queued unit, so two reconcilers do not both send it."""
    claimed = store.jobs.update_one(
        {"_id": unit_id, "status": UnitStatus.QUEUED, "due_at": {"$lt": now}},
        # Its next run claims it (`take`), counting the attempt.
        {"$set": {"due_at": next_due, "resent": True}},
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
    # By _id alone, the rest checked here (see `claim`).
    found = store.jobs.find({"_id": {"$in": unit_ids}})
    return [cast(Unit, unit) for unit in found if unit.get("events_pending") is True]


def events_flushed(store: Store, unit_ids: list[str]) -> None:
    store.jobs.update_many({"_id": {"$in": unit_ids}}, {"$unset": {"events_pending": ""}})


def stale_outbox(store: Store, older_than: float, limit: int) -> list[str]:
    """Units whose owed events were never flushed (a crash in between)."""
    found = store.jobs.find(
        {"events_pending": True, "completed_at": {"$lt": older_than}}, {"_id": 1}, limit=limit
    )
    return [doc["_id"] for doc in found]
