"""Stored assistants.

`tools` and `metadata` are user-controlled trees whose keys may hold anything
JSON allows ("$where", "a.b", NUL), which BSON keys cannot all hold; they are
stored as JSON text, so every value the schema allows round-trips exactly.
"""

from __future__ import annotations

import json
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING, DESCENDING

from worker.ids import new_id
from worker.schema import AssistantCreate, tools_as_given
from worker.store import Doc, Store


def ensure_indexes(store: Store) -> None:
    store.assistants.create_index("id", unique=True)
    # The idempotency key of processing: a redelivered job finds its assistant.
    store.assistants.create_index("job_id", unique=True)
    store.assistants.create_index(
        [("tenant", ASCENDING), ("created_at", ASCENDING), ("_id", ASCENDING)]
    )


def new_document(request: AssistantCreate, *, tenant: str, job_id: str, now: int) -> Doc:
    return {
        "_id": ObjectId(),
        "id": new_id("asst_"),
        "tenant": tenant,
        "job_id": job_id,
        "created_at": now,
        "name": request.name,
        "description": request.description,
        "model": request.model,
        "instructions": request.instructions,
        "tools_json": json.dumps(tools_as_given(request), ensure_ascii=False),
        "file_ids": request.file_ids,
        "metadata_json": json.dumps(request.metadata or {}, ensure_ascii=False),
    }


def public(doc: Doc) -> dict[str, Any]:
    """The assistant object of the origin API."""
    return {
        "_id": str(doc["_id"]),
        "id": doc["id"],
        "object": "assistant",
        "created_at": doc["created_at"],
        "name": doc.get("name"),
        "description": doc.get("description"),
        "model": doc["model"],
        "instructions": doc.get("instructions"),
        "tools": json.loads(doc["tools_json"]),
        "file_ids": list(doc.get("file_ids") or []),
        "metadata": json.loads(doc["metadata_json"]),
    }


def get(store: Store, tenant: str, assistant_id: str) -> Doc | None:
    return store.assistants.find_one({"id": assistant_id, "tenant": tenant})


def delete(store: Store, tenant: str, assistant_id: str) -> bool:
    return store.assistants.delete_one({"id": assistant_id, "tenant": tenant}).deleted_count == 1


def list_page(
    store: Store,
    tenant: str,
    *,
    limit: int,
    order: str,
    after: str | None,
    before: str | None,
) -> tuple[list[Doc], bool] | None:
    """A page ordered by (created_at, _id); None when a cursor id is unknown."""
    query: Doc = {"tenant": tenant}
    direction = DESCENDING if order == "desc" else ASCENDING
    bounds = []
    for cursor_id, forward in ((after, True), (before, False)):
        if cursor_id is None:
            continue
        anchor = store.assistants.find_one({"id": cursor_id, "tenant": tenant}, {"created_at": 1})
        if anchor is None:
            return None
        # "after" continues in the list's own order, "before" goes against it.
        greater = forward == (order == "asc")
        op = "$gt" if greater else "$lt"
        bounds.append(
            {
                "$or": [
                    {"created_at": {op: anchor["created_at"]}},
                    {"created_at": anchor["created_at"], "_id": {op: anchor["_id"]}},
                ]
            }
        )
    if bounds:
        query["$and"] = bounds
    sort = [("created_at", direction), ("_id", direction)]
    if before is not None and after is None:
        # Read backwards from the cursor, then restore the list's order.
        reverse = [("created_at", -direction), ("_id", -direction)]
        docs = list(store.assistants.find(query, sort=reverse, limit=limit + 1))
        has_more = len(docs) > limit
        return list(reversed(docs[:limit])), has_more
    docs = list(store.assistants.find(query, sort=sort, limit=limit + 1))
    return docs[:limit], len(docs) > limit
