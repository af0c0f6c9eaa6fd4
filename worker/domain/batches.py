"""The batch document and object, and what its chunks add up to."""

from __future__ import annotations

import json
from typing import Any

from worker.domain.documents import Doc, Tally
from worker.domain.statuses import BatchStatus, UnitStatus


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


def tally(codes: list[int | None], status: str) -> Tally:
    """What a finished or cancelled chunk adds to its batch."""
    completed = sum(1 for code in codes if code == 200)
    failed = sum(1 for code in codes if code is not None and code != 200)
    cancelled = len(codes) - completed - failed if status == UnitStatus.CANCELLED else 0
    return Tally(completed, failed, cancelled)


def request_counts(doc: Doc) -> dict[str, int]:
    """The batch's counts: its total, and the sum of its chunks' tallies."""
    sums = [sum(column) for column in zip(*(doc.get("tally") or {}).values(), strict=True)]
    completed, failed, cancelled = sums or (0, 0, 0)
    total = doc["request_counts"]["total"]
    return {"total": total, "completed": completed, "failed": failed, "cancelled": cancelled}
