"""Modifies and deletes of assistants, as workers apply them.

The changes of one assistant apply in the order they were accepted, one at
a time: a unit whose target has an earlier accepted change still open
(queued or in progress, in any worker) is given back to the queue and sent
again when that change finishes. Within the units a worker holds, changes
run in rounds, each assistant at most once a round, in acceptance order.
While a change is open no later change of its assistant can apply, so
applying it again after a crash (the same `$set` of the same values) has
the same effect: processing stays idempotent. An update never inserts, so a
change that races a delete finishes with a 404 result and never brings the
assistant back.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from typing import Any

from worker.domain import assistants as assistant_docs
from worker.domain.documents import Doc, Unit
from worker.domain.schema import fields_sent, validate_modify
from worker.domain.units import order_key
from worker.queueing.routes import unit_task
from worker.runtime import Runtime
from worker.store import assistants, units

log = logging.getLogger(__name__)

NOT_FOUND = {"detail": "No assistant found"}

Outcomes = dict[str, list[tuple[int, Any]]]


def is_change(unit: Unit) -> bool:
    return bool(unit.get("targets"))


def hold_back(rt: Runtime, claimed: list[Unit]) -> list[Unit]:
    """The claimed units that may go on; the rest wait for earlier changes."""
    changing = sorted((u for u in claimed if is_change(u)), key=order_key)
    if not changing:
        return claimed
    targets = sorted({t for unit in changing for t in unit["targets"]})
    ids = [unit["_id"] for unit in claimed]
    first_open = _first_open(units.open_changes(rt.store, targets, exclude=ids))
    waiting: list[Unit] = []
    waited_on: set[str] = set()
    for unit in changing:
        key = order_key(unit)
        if any(t in waited_on or first_open.get(t, key) < key for t in unit["targets"]):
            waiting.append(unit)
            waited_on.update(unit["targets"])
    if not waiting:
        return claimed
    due = int(time.time()) + rt.settings.resend_after_seconds
    released = [unit for unit in waiting if units.release(rt.store, unit, due)]
    _send_unblocked(rt, released)
    held = {unit["_id"] for unit in waiting}
    return [unit for unit in claimed if unit["_id"] not in held]


def _first_open(docs: list[Doc]) -> dict[str, tuple[float, str]]:
    """Per target, the acceptance key of its earliest open change."""
    first: dict[str, tuple[float, str]] = {}
    for doc in docs:
        key = (doc.get("accepted_at", float(doc["created_at"])), doc["_id"])
        for target in doc["targets"]:
            if target not in first or key < first[target]:
                first[target] = key
    return first


def _send_unblocked(rt: Runtime, released: list[Unit]) -> None:
    """Send again the released units whose earlier changes finished meanwhile.

    Each released unit is queued before this reads, and a unit that finishes
    looks for queued ones after its result is written (`wake`): one of the two
    sees the other, so no unit waits for a finish it missed. The reconciler
    sends it anyway once it is due.
    """
    if not released:
        return
    targets = sorted({t for unit in released for t in unit["targets"]})
    others = units.open_changes(rt.store, targets, exclude=[])
    for unit in released:
        key = order_key(unit)
        blockers = [
            doc
            for doc in others
            if doc["_id"] != unit["_id"]
            and set(doc["targets"]) & set(unit["targets"])
            and (doc.get("accepted_at", float(doc["created_at"])), doc["_id"]) < key
        ]
        if not blockers:
            _send(rt, unit["_id"], unit.get("batch_id"))


def wake(rt: Runtime, done: list[Unit]) -> None:
    """After changes finish, send the units that waited for them."""
    targets = sorted({t for unit in done if is_change(unit) for t in unit["targets"]})
    if not targets:
        return
    for doc in units.queued_changes(rt.store, targets):
        _send(rt, doc["_id"], doc.get("batch_id"))


def _send(rt: Runtime, unit_id: str, batch_id: str | None) -> None:
    try:
        rt.sender.send(unit_task(batch_id), unit_id)
    except Exception:  # queued and due: the reconciler sends it
        log.warning("unit %s waits for the reconciler", unit_id, exc_info=True)


def apply(rt: Runtime, claimed: list[Unit], outcomes: Outcomes) -> None:
    """Apply the modifies and deletes of the claimed units, writing their outcomes."""
    pending: list[tuple[Unit, int]] = []
    for unit in sorted(claimed, key=order_key):
        results = outcomes[unit["_id"]]
        for index, item in enumerate(unit["items"]):
            if "op" in item and results[index][0] == 0:
                pending.append((unit, index))
    if not pending:
        return
    # Round r holds the r-th change of each assistant, so a round changes an
    # assistant at most once and rounds keep each assistant's order.
    rounds: list[list[tuple[Unit, int]]] = []
    seen: dict[str, int] = defaultdict(int)
    for unit, index in pending:
        target = unit["items"][index]["target"]
        number = seen[target]
        seen[target] += 1
        if number == len(rounds):
            rounds.append([])
        rounds[number].append((unit, index))
    for changes in rounds:
        _apply_round(rt, changes, outcomes)


def _apply_round(rt: Runtime, changes: list[tuple[Unit, int]], outcomes: Outcomes) -> None:
    modifies: list[tuple[Unit, int, Doc]] = []
    deletes: list[tuple[Unit, int]] = []
    for unit, index in changes:
        item = unit["items"][index]
        if item["op"] == "delete":
            deletes.append((unit, index))
            continue
        checked = validate_modify(json.loads(item["body"]), rt.settings.models)
        if isinstance(checked, list):
            outcomes[unit["_id"]][index] = (422, {"detail": checked})
        else:
            modifies.append((unit, index, assistant_docs.changes(fields_sent(checked))))
    assistants.update(
        rt.store,
        [(u["tenant"], u["items"][i]["target"], fields) for u, i, fields in modifies],
    )
    if deletes:
        _delete(rt, deletes, outcomes)
    if modifies:
        targets = [u["items"][i]["target"] for u, i, _ in modifies]
        found = {doc["id"]: doc for doc in assistants.find_by_public_ids(rt.store, targets)}
        for unit, index, _ in modifies:
            doc = found.get(unit["items"][index]["target"])
            if doc is None or doc["tenant"] != unit["tenant"]:
                outcomes[unit["_id"]][index] = (404, NOT_FOUND)
            else:
                outcomes[unit["_id"]][index] = (200, assistant_docs.public(doc))


def _delete(rt: Runtime, deletes: list[tuple[Unit, int]], outcomes: Outcomes) -> None:
    """Delete the targets; a redelivered unit knows, from `deleting`, which it
    deleted before its result was written."""
    targets = [u["items"][i]["target"] for u, i in deletes]
    owners = {doc["id"]: doc["tenant"] for doc in assistants.find_by_public_ids(rt.store, targets)}
    existing: dict[str, list[str]] = defaultdict(list)
    by_id = {}
    for unit, index in deletes:
        item = unit["items"][index]
        by_id[unit["_id"]] = unit
        if owners.get(item["target"]) == unit["tenant"]:
            existing[unit["_id"]].append(item["id"])
    noted: set[str] = set()
    for unit_id, job_ids in existing.items():
        # A unit whose lease was lost deletes nothing: its next holder does.
        if units.note_deleting(rt.store, by_id[unit_id], job_ids):
            noted.update(job_ids)
            by_id[unit_id].setdefault("deleting", []).extend(job_ids)
    assistants.delete_by_public_ids(
        rt.store, [u["items"][i]["target"] for u, i in deletes if u["items"][i]["id"] in noted]
    )
    for unit, index in deletes:
        item = unit["items"][index]
        if item["id"] in unit.get("deleting", []):
            outcomes[unit["_id"]][index] = (200, assistant_docs.deleted(item["target"]))
        else:
            outcomes[unit["_id"]][index] = (404, NOT_FOUND)
