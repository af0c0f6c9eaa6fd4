"""Jobs, as work units hold them.

A unit is one document holding one request (a single create), the single
creates of one tenant that one edge process accepted together, or a chunk of a
batch's requests, with their results in parallel arrays. One document for many
requests instead of one per request is what lets them cost little more than the
assistants they insert; the API still shows one job per request. A job's
status is derived from its unit's status and its result code; the distinct
statuses of a unit's jobs are stored with it (`job_statuses`), set by every
write that changes them, so that a list filtered by status reads only units
that hold such jobs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from worker.domain import assistants
from worker.domain.documents import Doc, Item, Unit
from worker.domain.statuses import FINISHED_JOB, JobStatus, UnitStatus


def new_unit(
    *,
    unit_id: str,
    tenant: str,
    items: list[Item],
    now: int,
    callback_url: str | None = None,
    request_id: str | None = None,
    batch_id: str | None = None,
    seq: int = 0,
    job_events: bool = True,
    resend_after: int = 30,
    accepted_at: float | None = None,
) -> Unit:
    """A unit ready to insert, queued and due to be sent again after `resend_after`."""
    unit: Unit = {
        "_id": unit_id,
        "tenant": tenant,
        "seq": seq,
        "status": UnitStatus.QUEUED,
        "created_at": now,
        "started_at": None,
        "completed_at": None,
        "due_at": now + resend_after,
        # When the edge took it, to the microsecond (`created_at` is whole
        # seconds, as the API shows): the order of changes and of assistants,
        # and where a job's time went, are measured from here.
        "accepted_at": float(now) if accepted_at is None else accepted_at,
        "attempts": 0,
        "callback_url": callback_url,
        "request_id": request_id,
        "job_events": job_events,
        "items": items,
        "codes": [None] * len(items),
        "results": [None] * len(items),
        "job_statuses": [JobStatus.QUEUED],
    }
    if batch_id is not None:
        unit["batch_id"] = batch_id
    targets = sorted({item["target"] for item in items if "target" in item})
    if targets:
        unit["targets"] = targets
    return unit


def group_key(unit: Unit) -> tuple[str, str | None, bool]:
    """Lone creates with the same key may share one unit (`merged`): what a unit
    holds once for all its requests."""
    return unit["tenant"], unit["callback_url"], unit["job_events"]


def merged(members: list[Unit]) -> Unit:
    """One unit holding the requests of lone creates accepted together (group
    commit at the edge), so that they cost one document to store, claim and
    record. Its id is its first job's id; each request keeps its request id.
    The members take the group's times, so each one's 202 shows what its job
    will show."""
    first = members[0]
    items: list[Item] = []
    for member in members:
        for item in member["items"]:
            items.append({**item, "request_id": member["request_id"]})
    unit: Unit = {
        **first,
        "request_id": None,
        "items": items,
        "codes": [None] * len(items),
        "results": [None] * len(items),
    }
    for member in members:
        member["created_at"], member["accepted_at"] = unit["created_at"], accepted_at(unit)
    return unit


def request_ids(unit: Unit) -> list[str | None]:
    """The edge request id of each request a unit holds."""
    return [item.get("request_id", unit.get("request_id")) for item in unit["items"]]


def accepted_at(unit: Unit) -> float:
    return unit.get("accepted_at", float(unit["created_at"]))


def order_key(unit: Unit) -> tuple[float, str]:
    """Acceptance order of units: the changes of one assistant apply in it."""
    return accepted_at(unit), unit["_id"]


def results_fields(
    results: list[tuple[int, Any]], now: int, actions: list[str | None] | None = None
) -> Doc:
    """What a unit holds once done: its results in parallel arrays.

    A 200 body is stored as a reference to its assistant (the rest of the
    object is the request itself), which keeps a chunk's results small.
    """
    fields: Doc = {
        "status": UnitStatus.DONE,
        "codes": [code for code, _ in results],
        "results": [json.dumps(body, ensure_ascii=False) for _, body in results],
        "completed_at": now,
        "job_statuses": job_statuses(UnitStatus.DONE, [code for code, _ in results]),
    }
    if actions is not None:
        fields["actions"] = actions
    return fields


# What a 200 did, by the request's operation, where it is not recorded per item.
ACTION_OF_OP = {None: "created", "modify": "updated", "delete": "deleted"}


def item_action(unit: Unit, index: int) -> str | None:
    """What request `index` did to its assistant; None unless it succeeded."""
    if unit["codes"][index] != 200:
        return None
    recorded = unit.get("actions")
    if recorded and recorded[index] is not None:
        return recorded[index]
    return ACTION_OF_OP.get(unit["items"][index].get("op"))


def job_status(unit_status: str, code: int | None) -> JobStatus:
    """A job's status, from its unit's status and its result code."""
    if code == 200:
        return JobStatus.SUCCEEDED
    if code is not None:
        return JobStatus.FAILED
    if unit_status == UnitStatus.CANCELLED:
        return JobStatus.CANCELLED
    if unit_status == UnitStatus.DONE:  # finished without a result: cannot happen, say so
        return JobStatus.FAILED
    return JobStatus(unit_status)


def item_status(unit: Unit, index: int) -> JobStatus:
    return job_status(unit["status"], unit["codes"][index])


def job_statuses(unit_status: str, codes: Sequence[int | None]) -> list[str]:
    """The distinct statuses of a unit's jobs, as stored in `job_statuses`; a
    staged chunk's jobs are not shown yet, so it has none."""
    if unit_status == UnitStatus.STAGED:
        return []
    return sorted({job_status(unit_status, code) for code in codes})


def job_public(unit: Unit, index: int) -> Doc:
    """The job object of API.md for request `index` of a unit."""
    item = unit["items"][index]
    code = unit["codes"][index]
    status = item_status(unit, index)
    result = None
    if code is not None:
        result = {"status_code": code, "body": result_body(unit, index)}
    return {
        "id": item["id"],
        "object": "assistant.job",
        "status": status,
        "created_at": unit["created_at"],
        "started_at": unit.get("started_at"),
        "completed_at": unit.get("completed_at") if status in FINISHED_JOB else None,
        "attempts": unit.get("attempts", 0),
        "batch_id": unit.get("batch_id"),
        "custom_id": item.get("custom_id"),
        "callback_url": unit.get("callback_url"),
        "result": result,
    }


def result_body(unit: Unit, index: int) -> Any:
    """The body of a finished request's result: the assistant object or the error.

    A create's or an apply line's 200 result is kept as a reference and rebuilt
    with its request (an applied assistant equals its body); a modify's or a
    delete's is kept whole.
    """
    stored = unit["results"][index]
    assert stored is not None
    body = json.loads(stored)
    item = unit["items"][index]
    if unit["codes"][index] == 200 and item.get("op", "apply") == "apply":
        return assistants.public_from_request(json.loads(item["body"]), body)
    return body


# An apply line's `updated` result keeps, with its assistant's reference, the
# fields it changed (`{field: {"from", "to"}}`), shown on its result line.
RESULT_CHANGES = "changes"


def result_changes(unit: Unit, index: int) -> Doc | None:
    """The field changes an apply line's update made, if it recorded them (a
    redelivered line that finds its update already made has none to tell)."""
    item = unit["items"][index]
    stored = unit["results"][index]
    if unit["codes"][index] != 200 or item.get("op") != "apply" or stored is None:
        return None
    changes = json.loads(stored).get(RESULT_CHANGES)
    return changes if isinstance(changes, dict) else None


def is_finished(job: Doc) -> bool:
    return job["status"] in FINISHED_JOB


def kind(unit: Unit) -> str:
    """single or batch: the label of metrics and the queue it goes to."""
    return "batch" if unit.get("batch_id") else "single"
