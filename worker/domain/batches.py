"""The batch document and object, and what its chunks add up to."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any, cast

from worker.domain.documents import Doc, Tally, Unit
from worker.domain.statuses import BatchStatus, UnitStatus
from worker.domain.units import item_action

ACTIONS = ("created", "updated", "unchanged", "deleted")


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
    mode: str = "create",
    prune: bool = False,
    retry_of: str | None = None,
) -> Doc:
    doc: Doc = {
        "_id": batch_id,
        "tenant": tenant,
        "status": BatchStatus.VALIDATING,
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
        "mode": mode,
        "prune": prune,
    }
    if retry_of is not None:
        doc["retry_of"] = retry_of  # the batch whose failed or cancelled lines it holds
    return doc


def public(doc: Doc) -> Doc:
    return {
        "id": doc["_id"],
        "object": "batch",
        "mode": doc.get("mode", "create"),
        "status": doc["status"],
        "created_at": doc["created_at"],
        "in_progress_at": doc.get("in_progress_at"),
        "completed_at": doc.get("completed_at"),
        "cancelling_at": doc.get("cancelling_at"),
        "cancelled_at": doc.get("cancelled_at"),
        "request_counts": request_counts(doc),
        "callback_url": doc.get("callback_url"),
        "metadata": json.loads(doc.get("metadata_json") or "{}"),
        "retry_of": doc.get("retry_of"),
    }


def tally(unit: Doc) -> Tally:
    """What a finished or cancelled chunk adds to its batch.

    A prune chunk's deletions are not requests of the batch: they count as
    `deleted` only, so `completed + failed + cancelled` stays the total.
    """
    codes: list[int | None] = unit["codes"]
    actions = [item_action(cast(Unit, unit), index) for index in range(len(codes))]
    done = Counter(actions)
    if unit.get("prune"):
        return Tally(0, 0, 0, deleted=done["deleted"])
    completed = sum(1 for code in codes if code == 200)
    failed = sum(1 for code in codes if code is not None and code != 200)
    cancelled = len(codes) - completed - failed if unit["status"] == UnitStatus.CANCELLED else 0
    return Tally(
        completed,
        failed,
        cancelled,
        done["created"],
        done["updated"],
        done["unchanged"],
        done["deleted"],
    )


COUNTS = ("completed", "failed", "cancelled", *ACTIONS)


def request_counts(doc: Doc) -> dict[str, int]:
    """The batch's counts: its total, and the sum of its chunks' tallies (those
    recorded before the action counts have three columns)."""
    sums = [0] * len(COUNTS)
    for recorded in (doc.get("tally") or {}).values():
        for column, value in enumerate(recorded):
            sums[column] += value
    return {"total": doc["request_counts"]["total"], **dict(zip(COUNTS, sums, strict=True))}
