"""Processing units: claim, validate, persist, record; in bulk, idempotently.

One call handles any number of units (a burst of single creates or one batch
chunk) with a fixed number of round trips: one read (with a claim before it,
but for first runs of pure creates), one `insert_many` of assistants, one
`bulk_write` of results, one publish.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, cast

from worker.domain import assistants as assistant_docs
from worker.domain.batches import tally
from worker.domain.documents import Doc, Tally, Unit
from worker.domain.events import destination
from worker.domain.retention import expire_at
from worker.domain.schema import AssistantCreate, validate_create
from worker.domain.statuses import UnitStatus
from worker.domain.units import accepted_at, job_public, results_fields
from worker.runtime import Runtime
from worker.services import applying, batches, changes, lanes, outbox, turns
from worker.store import assistants, tenants, units
from worker.telemetry import metrics
from worker.telemetry.stages import Stages

log = logging.getLogger(__name__)

Outcomes = dict[str, list[tuple[int, Any]]]


def process(rt: Runtime, unit_ids: list[str], *, singles: bool = False) -> int:
    """Process the queued units among `unit_ids`; returns how many were finished.
    `singles`: sent to the single-create queue, where pure creates skip the
    claim (`units.take`); a batch chunk is always claimed."""
    started = time.time()
    stages = Stages()
    lease = rt.settings.lease_seconds
    claimed = (units.take if singles else units.claim)(rt.store, unit_ids, lease)
    # Modifies and deletes wait for earlier changes of their assistants.
    claimed = changes.hold_back(rt, claimed)
    if singles:
        lanes.taken(rt, claimed)
    if not claimed:
        return 0
    stages.lap("claim")
    metrics.units_claimed(claimed)
    now = int(time.time())
    outcomes, valid, applying_lines = evaluate(rt, claimed)
    stages.lap("validate")
    by_id = {unit["_id"]: unit for unit in claimed}
    created = persist(
        rt,
        [
            assistant_docs.new_document(
                request,
                tenant=by_id[uid]["tenant"],
                job_id=by_id[uid]["items"][index]["id"],
                accepted_at=accepted_at(by_id[uid]),
                offset=index,
                now=now,
            )
            for uid, index, request in valid
        ],
    )
    for uid, index, _ in valid:
        outcomes[uid][index] = (200, created[by_id[uid]["items"][index]["id"]])
    stages.lap("insert")
    actions: applying.Actions = {}
    applying.apply(rt, applying_lines, outcomes, actions, now)
    for unit in claimed:
        if unit.get("prune") and unit["attempts"] <= rt.settings.max_attempts:
            applying.prune(rt, unit, outcomes, actions)
    changes.apply(rt, claimed, outcomes)
    stages.lap("change")
    owing = owes_job_events(rt, claimed)
    stages.lap("tenants")
    finished = units.record(
        rt.store,
        claimed,
        outcomes,
        now=now,
        expire_at=expire_at(rt.settings, now),
        owing=owing,
        actions=actions,
    )
    stages.lap("record")
    done = [unit for unit in claimed if unit["_id"] in finished]
    rt.publish_finished(finished_jobs(done, outcomes, now))
    stages.lap("publish")
    outbox.flush_unit_events(rt, [unit["_id"] for unit in done if unit["_id"] in owing])
    tally_batches(rt, done, outcomes, actions)
    changes.wake(rt, done)
    stages.lap("tell")
    metrics.units_finished(claimed, outcomes, finished, started=started, stages=stages.ms)
    return len(finished)


def take_turn(rt: Runtime) -> None:
    """A bulk worker's turn: the next chunk across every tenant with chunks in
    line, chosen now. One that cannot be claimed (cancelled, or done by an
    earlier turn) passes the turn to the next."""
    for _ in range(turns.TRIES_PER_TURN):
        taken = turns.next_chunk(rt)
        if taken is None:
            return
        try:
            if process(rt, [taken.chunk_id]):
                return
        except Exception:
            # The store or the broker failed: the chunk keeps its place, and
            # the task's retry of this turn serves it.
            turns.put_back(rt, taken)
            raise


def finished_jobs(done: list[Unit], outcomes: Outcomes, now: int) -> dict[str, Doc | None]:
    """What to tell waiters: each job id, with its job object for single creates
    (a batch's jobs are many and rarely waited for: their waiters read them)."""
    told: dict[str, Doc | None] = {}
    for unit in done:
        if "batch_id" in unit:
            told.update((item["id"], None) for item in unit["items"] if item["id"])
        else:
            finished = cast(Unit, {**unit, **results_fields(outcomes[unit["_id"]], now)})
            for index, item in enumerate(unit["items"]):
                told[item["id"]] = job_public(finished, index)
    return told


def evaluate(
    rt: Runtime, claimed: list[Unit]
) -> tuple[Outcomes, list[tuple[str, int, AssistantCreate]], list[applying.Line]]:
    """Each request's outcome so far (422s final), the valid creates to persist
    and the valid apply lines."""
    outcomes: Outcomes = {}
    valid: list[tuple[str, int, AssistantCreate]] = []
    lines: list[applying.Line] = []
    for unit in claimed:
        if unit["attempts"] > rt.settings.max_attempts:
            # This unit has been claimed again and again without finishing:
            # it likely kills its worker. Fail it instead of looping forever.
            detail = {"detail": "processing did not complete after repeated attempts"}
            outcomes[unit["_id"]] = [(500, detail)] * len(unit["items"])
            continue
        results: list[tuple[int, Any]] = []
        for index, item in enumerate(unit["items"]):
            op = item.get("op")
            if op is not None and op != "apply":
                results.append((0, None))  # a modify or delete: `changes.apply`
                continue
            checked = validate_create(json.loads(item["body"]), rt.settings.models)
            if isinstance(checked, list):
                results.append((422, {"detail": checked}))
            elif op == "apply":
                results.append((0, None))  # `applying.apply`
                lines.append((unit, index, checked))
            else:
                results.append((200, None))  # the assistant's reference, once persisted
                valid.append((unit["_id"], index, checked))
        outcomes[unit["_id"]] = results
    return outcomes, valid, lines


def tally_batches(
    rt: Runtime, done: list[Unit], outcomes: Outcomes, actions: applying.Actions
) -> None:
    """Tell each batch what its finished chunks came to."""
    tallies: dict[tuple[str, str], dict[int, Tally]] = {}
    for unit in done:
        if "batch_id" in unit:
            finished = {
                **unit,
                "status": UnitStatus.DONE,
                "codes": [code for code, _ in outcomes[unit["_id"]]],
                "actions": actions.get(unit["_id"]),
            }
            tallies.setdefault((unit["tenant"], unit["batch_id"]), {})[unit["seq"]] = tally(
                finished
            )
    for (tenant, batch_id), by_seq in tallies.items():
        batches.refresh(rt, tenant, batch_id, by_seq)


def persist(rt: Runtime, docs: list[Doc]) -> dict[str, Any]:
    """Insert the assistants; returns each job id's reference to its assistant.

    The `_id` derived from the job makes this idempotent: a job processed
    before (its result lost to a crash) finds the assistant it made then.
    Results keep only a reference to each assistant (see `units.record`).
    """
    created: dict[str, Any] = {}
    if not docs:
        return created
    duplicates = [doc["_id"] for doc in assistants.insert(rt.store, docs)]
    known = set(duplicates)
    for doc in docs:
        if doc["_id"] not in known:
            created[doc["job_id"]] = assistant_docs.reference(doc)
    if duplicates:
        for doc in assistants.find_by_ids(rt.store, duplicates):
            created[doc["job_id"]] = assistant_docs.reference(doc)
        missing = {str(oid) for oid in duplicates} - {ref["_id"] for ref in created.values()}
        if missing:
            # A duplicate of the random assistant id, not of the job: try again.
            raise RuntimeError(f"assistant insert collided for jobs {sorted(missing)}")
    return created


def owes_job_events(rt: Runtime, claimed: list[Unit]) -> set[str]:
    """Units whose jobs have somewhere to send their events."""
    wanting = [unit for unit in claimed if unit.get("job_events", True)]
    urls = tenants.webhook_urls(
        rt.store, {u["tenant"] for u in wanting if not u.get("callback_url")}
    )
    return {u["_id"] for u in wanting if destination(u.get("callback_url"), urls.get(u["tenant"]))}
