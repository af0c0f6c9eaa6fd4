"""Apply lines: bring an assistant to the state a manifest line describes.

A line names its assistant by provisioning key, or else by id. It creates
the assistant (carrying the key) when none is named (a name of the form
`asst_...` that names no assistant is a 404: it is never made a key), sets it to exactly the
body when it differs, and writes nothing when it is equal. In bulk: one read
of the named assistants per chunk, one `insert_many`, one `bulk_write`.

Idempotent as creates are: a new assistant's `_id` comes from its job, so a
redelivered line finds what it created; an update marks the assistant with
the job that applied it (`applied_by`), so a redelivered line that finds it
equal still reports `updated`. Two applies of one new key race on the key's
unique index: the loser finds the winner's assistant and compares with it.
Lines of existing assistants carry them as targets, so they apply in order
with the modifies and deletes of those assistants (`changes`).
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from worker.domain import assistants as assistant_docs
from worker.domain.documents import Doc, Unit
from worker.domain.schema import AssistantCreate
from worker.domain.units import RESULT_CHANGES, accepted_at
from worker.runtime import Runtime
from worker.store import assistants, units

Outcomes = dict[str, list[tuple[int, Any]]]
Actions = dict[str, list[str | None]]
Line = tuple[Unit, int, AssistantCreate]

NOT_FOUND = {"detail": "No assistant found"}
# A line applied under If-Match whose assistant is no longer at the version
# its plan saw: it changes nothing.
PLAN_STALE = {
    "detail": "The assistant changed since the plan was made; this line changed nothing: plan again"
}
APPLIED_BY = "applied_by"


def apply(rt: Runtime, lines: list[Line], outcomes: Outcomes, actions: Actions, now: int) -> None:
    """Apply the valid apply lines, writing their outcomes and actions."""
    by_tenant: dict[str, list[Line]] = defaultdict(list)
    for line in lines:
        by_tenant[line[0]["tenant"]].append(line)
    for tenant, mine in by_tenant.items():
        _apply_tenant(rt, tenant, mine, outcomes, actions, now)


def _apply_tenant(
    rt: Runtime, tenant: str, lines: list[Line], outcomes: Outcomes, actions: Actions, now: int
) -> None:
    # The edge named the assistants that existed when it took the batch (`target`);
    # the others are new, unless another apply of their key wins the race below.
    targets = [_target(line) for line in lines]
    found = assistants.find_mine(
        rt.store, tenant, [t for t in targets if t is not None], assistants.APPLY_VIEW
    )
    new: list[tuple[Line, Doc]] = []
    existing: list[tuple[Line, Doc]] = []
    for line, target in zip(lines, targets, strict=True):
        doc = found.get(target) if target is not None else None
        expect = _expect(line)
        if expect is not None and (doc is None) != (expect == ""):
            # Planned as a create and there is one now, or the reverse.
            _set(outcomes, actions, line, 412, PLAN_STALE, None)
        elif doc is not None:
            existing.append((line, doc))
        elif (target is not None and target == _name(line)) or (
            target is None and assistants.may_be_id(_name(line))
        ):
            # Named by id, and gone (or never there): a name that reads as an
            # assistant id is never made a new provisioning key.
            _set(outcomes, actions, line, 404, NOT_FOUND, None)
        else:
            unit, index, request = line
            new.append(
                (
                    line,
                    assistant_docs.new_document(
                        request,
                        tenant=tenant,
                        job_id=unit["items"][index]["id"],
                        accepted_at=accepted_at(unit),
                        offset=index,
                        now=now,
                        key=_name(line),
                    )
                    | {assistant_docs.CONTENT_HASH: _hash(line)},
                )
            )
    taken = assistants.insert(rt.store, [doc for _, doc in new])
    if taken:
        # Already there: this job's own assistant (a redelivery), or another
        # apply's of the same key, which won the key's unique index.
        lost = {id(doc) for doc in taken}
        made = assistants.find_by_ids(rt.store, [doc["_id"] for doc in taken])
        mine = {doc["_id"]: doc for doc in made}
        others = assistants.find_named(
            rt.store, tenant, [_name(line) for line, doc in new if id(doc) in lost]
        )
        for line, doc in new:
            if id(doc) not in lost:
                continue
            winner = mine.get(doc["_id"]) or others.get(_name(line))
            if winner is None:  # the winner was deleted meanwhile: report, do not loop
                _set(outcomes, actions, line, 404, NOT_FOUND, None)
            elif winner["job_id"] == doc["job_id"]:
                _set(outcomes, actions, line, 200, assistant_docs.reference(winner), "created")
            elif _expect(line) is not None:  # planned as a create: another made it
                _set(outcomes, actions, line, 412, PLAN_STALE, None)
            else:
                existing.append((line, winner))
        new = [(line, doc) for line, doc in new if id(doc) not in lost]
    for line, doc in new:
        _set(outcomes, actions, line, 200, assistant_docs.reference(doc), "created")
    _update(rt, existing, outcomes, actions)


def _hash(line: Line) -> str:
    return assistant_docs.content_hash(json.loads(line[0]["items"][line[1]]["body"]))


def _target(line: Line) -> str | None:
    return line[0]["items"][line[1]].get("target")


def _expect(line: Line) -> str | None:
    return line[0]["items"][line[1]].get("expect")


def _update(
    rt: Runtime, existing: list[tuple[Line, Doc]], outcomes: Outcomes, actions: Actions
) -> None:
    """Set the existing assistants that differ from their lines. The content hash
    decides where the assistant has one; the others are read whole and compared.
    Those that differ are read whole too, for their changes."""
    hashes = [_hash(line) for line, _ in existing]
    need = [
        doc["id"]
        for (_, doc), wanted in zip(existing, hashes, strict=True)
        if doc.get(assistant_docs.CONTENT_HASH) != wanted
    ]
    whole = assistants.find_mine(rt.store, existing[0][1]["tenant"], need) if need else {}
    updates: list[tuple[Any, Doc]] = []
    changed: list[tuple[Line, Doc, Doc]] = []
    for (line, doc), wanted in zip(existing, hashes, strict=True):
        unit, index, request = line
        job_id = unit["items"][index]["id"]
        stored = doc.get(assistant_docs.CONTENT_HASH)
        expect = _expect(line)
        if expect is not None and doc.get(APPLIED_BY) != job_id and doc.get("job_id") != job_id:
            # Under If-Match: only at the version the plan saw (unless this job
            # applied it before a crash). Read whole where it has no content hash.
            current = doc if stored else whole.get(doc["id"])
            if current is None or assistant_docs.version(current) != expect:
                _set(outcomes, actions, line, 412, PLAN_STALE, None)
                continue
        # The decision the plan made: from the hash, else from the whole document.
        current = doc if stored == wanted else whole.get(doc["id"])
        if current is None:  # deleted since it was read: as a line naming a deleted one
            _set(outcomes, actions, line, 404, NOT_FOUND, None)
            continue
        decision, fields_changed = assistant_docs.decide(
            current, json.loads(unit["items"][index]["body"])
        )
        differs = decision == "update"
        if differs:
            fields = {
                **assistant_docs.content(request),
                APPLIED_BY: job_id,
                assistant_docs.CONTENT_HASH: wanted,
            }
            updates.append((doc["_id"], fields))
            changed.append((line, doc, fields_changed or {}))
        else:
            # Equal: unchanged, unless this job made it so before a crash.
            action = "unchanged"
            if doc.get("job_id") == job_id:
                action = "created"
            elif doc.get(APPLIED_BY) == job_id:
                action = "updated"
            _set(outcomes, actions, line, 200, assistant_docs.reference(doc), action)
    missing = assistants.set_content(rt.store, updates)
    for line, doc, fields_changed in changed:
        if doc["_id"] in missing:
            _set(outcomes, actions, line, 404, NOT_FOUND, None)
        else:
            # The result keeps the changes with its reference (`result_changes`).
            result = {**assistant_docs.reference(doc), RESULT_CHANGES: fields_changed}
            _set(outcomes, actions, line, 200, result, "updated")


def _name(line: Line) -> str:
    custom_id = line[0]["items"][line[1]]["custom_id"]
    assert custom_id is not None  # an apply line always has one
    return custom_id


def _set(
    outcomes: Outcomes,
    actions: Actions,
    line: Line,
    code: int,
    body: Any,
    action: str | None,
) -> None:
    unit, index, _ = line
    outcomes[unit["_id"]][index] = (code, body)
    actions.setdefault(unit["_id"], [None] * len(unit["items"]))[index] = action


def prune(rt: Runtime, unit: Unit, outcomes: Outcomes, actions: Actions) -> None:
    """Delete the tenant's keyed assistants the batch's manifest does not name.

    The deletions are planned and written on the chunk before any is made, so
    a redelivered chunk reports the same lines."""
    items: list[Doc] | None = (
        [dict(item) for item in unit["items"]] if unit.get("planned") else None
    )
    if items is None:
        names = set(units.iter_custom_ids(rt.store, unit["batch_id"]))
        items = [
            {
                "id": "",
                "custom_id": doc[assistant_docs.KEY],
                "body": "{}",
                "op": "delete",
                "target": doc["id"],
                "oid": doc["_id"],
            }
            for doc in assistants.iter_keyed(rt.store, unit["tenant"])
            if assistant_docs.left_out(doc, names)
        ]
        items = units.plan_prune(rt.store, unit, items)
        if items is None:  # the lease was lost: the next holder prunes
            outcomes[unit["_id"]] = []
            return
    assistants.delete_by_oids(rt.store, [item["oid"] for item in items])
    unit["items"] = items  # type: ignore[typeddict-item]
    unit["codes"] = [None] * len(items)
    unit["results"] = [None] * len(items)
    outcomes[unit["_id"]] = [(200, assistant_docs.deleted(item["target"])) for item in items]
    actions[unit["_id"]] = ["deleted"] * len(items)
