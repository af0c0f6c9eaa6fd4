"""Processing units: claim, validate, persist, record; in bulk, idempotently.

One call handles any number of units (a burst of single creates or one batch
chunk) with a fixed number of round trips: one claim, one read, one
`insert_many` of assistants, one `bulk_write` of results, one publish.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from typing import Any

from pymongo import UpdateOne

from worker import assistants, batches, metrics, webhooks
from worker.retention import expire_at
from worker.runtime import Runtime
from worker.schema import AssistantCreate, validate_create
from worker.store import Doc, insert_new

log = logging.getLogger(__name__)

Outcomes = dict[str, list[tuple[int, Any]]]


def process(rt: Runtime, unit_ids: list[str]) -> int:
    """Process the queued units among `unit_ids`; returns how many were finished."""
    units = claim(rt, unit_ids)
    if not units:
        return 0
    metrics.units_claimed(units)
    now = int(time.time())
    outcomes, valid = evaluate(rt, units)
    by_id = {unit["_id"]: unit for unit in units}
    created = persist(
        rt,
        [
            assistants.new_document(
                request,
                tenant=by_id[uid]["tenant"],
                job_id=by_id[uid]["items"][index]["id"],
                job_created_at=by_id[uid]["created_at"],
                now=now,
            )
            for uid, index, request in valid
        ],
    )
    for uid, index, _ in valid:
        outcomes[uid][index] = (200, created[by_id[uid]["items"][index]["id"]])
    owing = owes_job_events(rt, units)
    finished = record(rt, units, outcomes, now, owing)
    metrics.units_finished(units, outcomes, finished)
    done_units = [unit for unit in units if unit["_id"] in finished]
    rt.publish_finished([item["id"] for unit in done_units for item in unit["items"]])
    webhooks.flush_unit_events(rt, [unit["_id"] for unit in done_units if unit["_id"] in owing])
    tally_batches(rt, done_units, outcomes)
    return len(finished)


def evaluate(
    rt: Runtime, units: list[Doc]
) -> tuple[Outcomes, list[tuple[str, int, AssistantCreate]]]:
    """Each request's outcome so far (422s final), and the valid requests to persist."""
    outcomes: Outcomes = {}
    valid: list[tuple[str, int, AssistantCreate]] = []
    for unit in units:
        if unit["attempts"] > rt.settings.max_attempts:
            # This unit has been claimed again and again without finishing:
            # it likely kills its worker. Fail it instead of looping forever.
            detail = {"detail": "processing did not complete after repeated attempts"}
            outcomes[unit["_id"]] = [(500, detail)] * len(unit["items"])
            continue
        results: list[tuple[int, Any]] = []
        for index, item in enumerate(unit["items"]):
            checked = validate_create(json.loads(item["body"]), rt.settings.models)
            if isinstance(checked, list):
                results.append((422, {"detail": checked}))
            else:
                results.append((200, None))  # the assistant's reference, once persisted
                valid.append((unit["_id"], index, checked))
        outcomes[unit["_id"]] = results
    return outcomes, valid


def tally_batches(rt: Runtime, done_units: list[Doc], outcomes: Outcomes) -> None:
    """Tell each batch what its finished chunks came to."""
    tallies: dict[str, dict[int, list[int]]] = {}
    for unit in done_units:
        if unit.get("batch_id"):
            codes = [code for code, _ in outcomes[unit["_id"]]]
            facts = batches.unit_facts({"codes": codes, "status": "done"})
            tallies.setdefault(unit["batch_id"], {})[unit["seq"]] = facts
    for batch_id, facts_by_seq in tallies.items():
        batches.refresh(rt, batch_id, facts_by_seq)


def claim(rt: Runtime, unit_ids: list[str]) -> list[Doc]:
    """Take the queued units under a fresh lease token; only this call may finish them."""
    token = secrets.token_hex(16)
    now = time.time()
    rt.store.jobs.update_many(
        {"_id": {"$in": unit_ids}, "status": "queued"},
        [
            {
                "$set": {
                    "status": "in_progress",
                    "lease": token,
                    # Past this, the reconciler takes the unit back.
                    "due_at": now + rt.settings.lease_seconds,
                    "attempts": {"$add": ["$attempts", 1]},
                    # The first attempt's start is the job's start.
                    "started_at": {"$ifNull": ["$started_at", int(now)]},
                }
            }
        ],
    )
    return list(rt.store.jobs.find({"_id": {"$in": unit_ids}, "lease": token}, {"results": 0}))


def persist(rt: Runtime, docs: list[Doc]) -> dict[str, Any]:
    """Insert the assistants; returns each job id's reference to its assistant.

    The `_id` derived from the job makes this idempotent: a job processed
    before (its result lost to a crash) finds the assistant it made then.
    Results keep only a reference to each assistant (see `record`).
    """
    created: dict[str, Any] = {}
    if not docs:
        return created
    existing = insert_new(rt.store.assistants, docs)
    duplicates = [docs[i]["_id"] for i in existing]
    docs = [doc for i, doc in enumerate(docs) if i not in existing]
    for doc in docs:
        created[doc["job_id"]] = assistants.reference(doc)
    if duplicates:
        for doc in rt.store.assistants.find({"_id": {"$in": duplicates}}):
            created[doc["job_id"]] = assistants.reference(doc)
        missing = {str(oid) for oid in duplicates} - {ref["_id"] for ref in created.values()}
        if missing:
            # A duplicate of the random assistant id, not of the job: try again.
            raise RuntimeError(f"assistant insert collided for jobs {sorted(missing)}")
    return created


def record(
    rt: Runtime,
    units: list[Doc],
    outcomes: Outcomes,
    now: int,
    owing: set[str],
) -> set[str]:
    """Write results, fenced by the lease; returns the ids of units this call finished.

    A 200 result is stored as a reference to its assistant (the rest of the
    object is the request itself), which keeps a chunk's results small.
    """
    expires = expire_at(rt.settings, now)
    ops = []
    for unit in units:
        results = outcomes[unit["_id"]]
        update: Doc = {
            "status": "done",
            "codes": [code for code, _ in results],
            "results": [json.dumps(body, ensure_ascii=False) for _, body in results],
            "completed_at": now,
            "expire_at": expires,
            "done_by": unit["lease"],
        }
        if unit["_id"] in owing:
            # The outbox: the events are owed in the same write as the result.
            update["events_pending"] = True
        ops.append(
            UpdateOne(
                {"_id": unit["_id"], "lease": unit["lease"], "status": "in_progress"},
                {"$set": update, "$unset": {"lease": "", "due_at": ""}},
            )
        )
    rt.store.jobs.bulk_write(ops, ordered=False)
    # Which writes matched is not reported per operation; read back which
    # units this lease finished (a reclaimed unit's stale write matched nothing).
    ids = [unit["_id"] for unit in units]
    done = rt.store.jobs.find({"_id": {"$in": ids}, "done_by": units[0]["lease"]}, {"_id": 1})
    return {doc["_id"] for doc in done}


def owes_job_events(rt: Runtime, units: list[Doc]) -> set[str]:
    """Units whose jobs have somewhere to send their events."""
    wanting = [unit for unit in units if unit.get("job_events", True)]
    urls = webhooks.tenant_urls(rt, {u["tenant"] for u in wanting if not u.get("callback_url")})
    return {u["_id"] for u in wanting if u.get("callback_url") or urls.get(u["tenant"])}
